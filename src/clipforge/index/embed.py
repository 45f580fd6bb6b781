"""Images and texts -> L2-normalised vectors for the search index.

Reading a file, hashing it, checking it is a sane image and preprocessing it happen together in
DataLoader workers (``read_image_file``), so the main process only runs the model. Untrusted
bytes (uploads, folders from anywhere) are decoded by ``decode_image``: the pixel count is
checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, SearchIndexError
from ..models.clip import CLIP
from ..inference.engine import Engine, EngineConfig, Precision
from ..transforms import Preprocess

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "ImageRecord",
    "EmbeddedBatch",
    "Embedder",
    "decode_image",
    "read_image_file",
    "list_image_files",
    "embed_image_files",
    "load_embedder",
    "combine_queries",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# 40 megapixels decode to ~120 MB of RGB: plenty for photos, far below what would hurt a server.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_CAPTION_CHARS = 10_000


@dataclass(frozen=True)
class ImageRecord:
    """The metadata of one image, as stored in the index's SQLite table."""

    path: str
    folder: str
    sha256: str
    size: int
    width: int
    height: int
    caption: str | None = None
    tags: tuple[str, ...] = ()


@dataclass
class EmbeddedBatch:
    records: list[ImageRecord]
    vectors: np.ndarray  # (n, embed_dim) float32, L2-normalised
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why (unreadable, duplicate)


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Bytes -> decoded PIL image (first frame of an animation), or DataError saying why not."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size  # read from the header: nothing decoded yet
        if width * height > max_pixels:
            raise DataError(
                f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,}; resize it first"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
        return image
    except DataError:
        raise
    # PIL's format plugins raise many types on corrupt input (OSError, SyntaxError, ValueError,
    # struct.error, EOFError...); every one of them means the same thing to the caller.
    except Exception as e:  # noqa: BLE001
        why = "unknown format" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise DataError(f"not a readable image ({why}); send a PNG, JPEG, WebP, GIF, BMP or TIFF file") from None


def _sidecar_caption(path: Path) -> str | None:
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        return None
    text = txt.read_text(encoding="utf-8", errors="replace").strip()
    return text[:MAX_CAPTION_CHARS] or None


def _read_bytes(path: Path) -> bytes:
    size = path.stat().st_size
    if size == 0:
        raise DataError("empty file")
    if size > MAX_IMAGE_BYTES:
        raise DataError(f"file is {size:,} bytes, over the limit of {MAX_IMAGE_BYTES:,}")
    return path.read_bytes()


def read_image_file(
    path: Path, root: Path | None, preprocess: Preprocess, max_pixels: int = MAX_IMAGE_PIXELS, data: bytes | None = None
) -> tuple[ImageRecord, torch.Tensor]:
    """One file -> its record and preprocessed (3, H, W) tensor; DataError if unusable."""
    data = _read_bytes(path) if data is None else data
    image = decode_image(data, max_pixels)
    folder = path.parent.relative_to(root).as_posix() if root is not None else ""
    record = ImageRecord(
        path=str(path.resolve()),
        folder="" if folder == "." else folder,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        width=image.width,
        height=image.height,
        caption=_sidecar_caption(path),
    )
    return record, preprocess(image)


def list_image_files(source: str | Path) -> tuple[list[Path], Path]:
    """A folder (recursive) or one image -> (sorted image paths, the root folders are relative to)."""
    root = Path(source)
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
        return paths, root
    if root.is_file():
        return [root], root.parent
    raise DataError(f"{root} does not exist; give an image file or a folder of images")


class _FileReader(torch.utils.data.Dataset):
    """Reads in DataLoader workers; files whose hash is already known are not decoded."""

    def __init__(self, paths: list[Path], root: Path, preprocess: Preprocess, known: frozenset[str]) -> None:
        self.paths, self.root, self.preprocess, self.known = paths, root, preprocess, known

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, ImageRecord | None, torch.Tensor | None, str]:
        path = self.paths[i]
        try:
            data = _read_bytes(path)
            if self.known and hashlib.sha256(data).hexdigest() in self.known:
                return i, None, None, "duplicate: already in the index"
            record, tensor = read_image_file(path, self.root, self.preprocess, data=data)
            return i, record, tensor, ""
        except (DataError, OSError) as e:
            return i, None, None, str(e)


def _collate(batch: list) -> list:
    return batch


def embed_image_files(
    engine: Engine,
    preprocess: Preprocess,
    paths: Sequence[Path],
    root: Path,
    *,
    batch_size: int = 64,
    workers: int = 2,
    known_hashes: frozenset[str] = frozenset(),
) -> Iterator[EmbeddedBatch]:
    """Yield embedded batches in file order; unreadable files and exact duplicates (by SHA-256,
    against ``known_hashes`` and earlier files) are reported in ``skipped``, never fatal."""
    reader = _FileReader(list(paths), root, preprocess, known_hashes)
    loader = torch.utils.data.DataLoader(reader, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    seen: set[str] = set()
    for batch in loader:
        skipped = {str(paths[i]): why for i, rec, _, why in batch if rec is None}
        good = []
        for i, rec, tensor, _ in batch:
            if rec is not None and rec.sha256 in seen:
                skipped[str(paths[i])] = "duplicate: same bytes as an earlier file"
            elif rec is not None:
                seen.add(rec.sha256)
                good.append((rec, tensor))
        vectors = engine.encode_images(torch.stack([t for _, t in good])).numpy() if good else _empty(engine)
        yield EmbeddedBatch([r for r, _ in good], vectors, skipped)


def _empty(engine: Engine) -> np.ndarray:
    return np.zeros((0, engine.embed_dim), dtype=np.float32)


def combine_queries(parts: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """Weighted sum of normalised embeddings, re-normalised: [(vector, weight)] -> (embed_dim,)."""
    total = sum(w * v / max(float(np.linalg.norm(v)), 1e-12) for v, w in parts)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise DataError("the query's parts cancel out (weights sum to zero); give positive weights")
    return (total / norm).astype(np.float32)


class Embedder:
    """A model and its preprocessing, run by the inference engine (``precision="auto"``: bf16
    where the hardware computes it natively), with a small cache of text embeddings (queries
    repeat). ``model`` stays the caller's fp32 model, for CLIPScore."""

    def __init__(
        self, model: CLIP, preprocess: Preprocess, model_ref: str, cache_size: int = 4096, precision: Precision = "auto"
    ) -> None:
        self.model, self.preprocess, self.model_ref = model.eval(), preprocess, model_ref
        self.engine = Engine(model, EngineConfig(precision=precision))
        self.dim = model.config.embed_dim
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        # One text -> vector past the cache; a service swaps in a micro-batcher (serve/batching.py).
        self.encode_text: Callable[[str], np.ndarray] = lambda text: self.texts([text])[0]

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> (n, embed_dim) float32, L2-normalised (long texts are truncated)."""
        return self.engine.encode_texts(list(texts)).numpy()

    def text(self, text: str) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        vector = self.encode_text(text)
        with self._lock:
            self._cache[text] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (n, embed_dim) float32, L2-normalised."""
        return self.engine.encode_images(torch.stack([self.preprocess(im) for im in images])).numpy()

    def image_bytes(self, data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
        return self.images([decode_image(data, max_pixels)])[0]


def load_embedder(model_ref: str) -> Embedder:
    """A checkpoint path or published name -> Embedder. Registry names alone are refused: they
    mean a random initialisation, which a later query could never reproduce."""
    from ..checkpoint import load
    from ..checkpoint.pretrained import resolve_pretrained
    from ..registry import MODEL_CONFIGS

    path = Path(model_ref)
    if not path.exists() and model_ref in MODEL_CONFIGS and resolve_pretrained(model_ref, None) is None:
        raise SearchIndexError(
            f"{model_ref!r} names an architecture, not weights: an index needs the same model at "
            "query time; pass a checkpoint file (clipforge.save) or a published name such as 'ViT-B/32'"
        )
    model, preprocess = load(str(path.resolve()) if path.exists() else model_ref)
    return Embedder(model, preprocess, str(path.resolve()) if path.exists() else model_ref)
