"""Embed many images or texts: parallel image decoding, batched inference, normalised output.

Unreadable images are skipped and reported, never fatal: one bad file in a folder of thousands
should not cost the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..models.clip import CLIP
from ..tokenizer import tokenize
from ..transforms import Preprocess

__all__ = ["EmbedResult", "IMAGE_SUFFIXES", "list_images", "embed_images", "embed_texts"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class EmbedResult:
    embeddings: np.ndarray  # (n, embed_dim) float32, L2-normalised
    items: list[str]  # the path or text of each row
    skipped: dict[str, str] = field(default_factory=dict)  # item -> reason


def list_images(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder (recursive), a single image, or a list of paths -> sorted image paths."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if root.is_dir():
            paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif root.is_file():
            paths = [root]
        else:
            raise DataError(f"{root} does not exist; give an image file or a folder of images")
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {source}")
    return paths


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], preprocess: Preprocess) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            with Image.open(self.paths[i]) as image:
                image.load()
                return i, self.preprocess(image), ""
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            return i, None, f"{type(e).__name__}: {e}"


def _collate(batch: list) -> list:
    return batch


def embed_images(
    model: CLIP,
    preprocess: Preprocess,
    paths: Sequence[Path],
    *,
    batch_size: int = 64,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> EmbedResult:
    loader = torch.utils.data.DataLoader(
        _ImageFiles(list(paths), preprocess), batch_size=batch_size, num_workers=workers, collate_fn=_collate
    )
    rows: list[torch.Tensor] = []
    items: list[str] = []
    skipped: dict[str, str] = {}
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in loader:
            good = [(i, x) for i, x, _ in batch if x is not None]
            skipped.update({str(paths[i]): why for i, x, why in batch if x is None})
            if good:
                images = torch.stack([x for _, x in good]).to(device)  # (batch, 3, H, W)
                rows.append(F.normalize(model.encode_image(images).float(), dim=-1).cpu())
                items.extend(str(paths[i]) for i, _ in good)
            if progress:
                progress(len(batch))
    return EmbedResult(_stack(rows, model), items, skipped)


def embed_texts(model: CLIP, texts: Sequence[str], *, batch_size: int = 256) -> EmbedResult:
    rows = []
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            tokens = tokenize(chunk, context_length=model.context_length, truncate=True).to(device)
            rows.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return EmbedResult(_stack(rows, model), list(texts))


def _stack(rows: list[torch.Tensor], model: CLIP) -> np.ndarray:
    if not rows:
        return np.zeros((0, model.config.embed_dim), dtype=np.float32)
    return torch.cat(rows).numpy().astype(np.float32)
