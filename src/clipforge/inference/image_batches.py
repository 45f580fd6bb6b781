"""The one batched image-embedding loop: ``index build/add``, ``embed_collection``, the in-memory
``embed_images`` and evaluation all run their images through ``embed_image_batches``.

Reading, hashing, decoding and preprocessing happen in DataLoader worker processes; the main
process only runs the engine. An item is a ``Record`` (a file, or a sample in a tar shard) or a
zero-argument function returning a PIL image (an evaluation set held in memory). An unreadable
item is counted with its reason, never fatal: one bad file must not cost the rest. With
``known_hashes``, items whose bytes are already known (an index's) are not even decoded.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..images import decode_image
from ..transforms import Preprocess
from .engine import Engine
from .reader import Record

__all__ = ["ImageItem", "DecodedImage", "ImageBatch", "embed_image_batches", "batch_ranges", "default_workers",
           "decode_item", "ALREADY_KNOWN", "REPEATED"]  # fmt: skip

ImageItem = Union[Record, Callable[[], Image.Image]]
ALREADY_KNOWN = "duplicate: already in the index"
REPEATED = "duplicate: same bytes as an earlier file"


@dataclass(frozen=True)
class DecodedImage:
    """What was learnt about one readable item while decoding it."""

    index: int  # position in the items given
    width: int
    height: int
    sha256: str | None  # of the file's bytes (None for an in-memory image)
    size: int  # bytes (0 for an in-memory image)
    captions: tuple[str, ...] = ()  # sidecar .txt lines or the shard sample's captions


@dataclass
class ImageBatch:
    """One batch after the engine: the readable items' rows, in order, and the rest skipped."""

    indices: list[int]  # every item of the batch, readable or not
    images: list[DecodedImage]  # the readable ones, one per row of ``vectors``
    vectors: np.ndarray  # (len(images), embed_dim) float32, L2-normalised
    skipped: list[tuple[int, str]]  # (index, reason)
    engine_seconds: float  # time spent in the engine on this batch


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def batch_ranges(start: int, stop: int, batch_size: int) -> list[range]:
    """Item indices ``[start, stop)`` cut into batches. Ranges, not lists: ten million items cost
    a few MB, not hundreds."""
    return [range(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]


class _Decoder(torch.utils.data.Dataset):
    """Item i -> (i, DecodedImage, (3, H, W) tensor), or (i, None, reason). Runs in workers."""

    def __init__(self, items: Sequence[ImageItem], preprocess: Preprocess, known: frozenset[str]) -> None:
        self.items, self.preprocess, self.known = items, preprocess, known

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, DecodedImage | None, torch.Tensor | str]:
        return i, *decode_item(self.items[i], i, self.preprocess, self.known)


def decode_item(item: ImageItem, index: int, preprocess: Preprocess,
                known: frozenset[str] = frozenset()) -> tuple[DecodedImage | None, torch.Tensor | str]:  # fmt: skip
    """Read, hash, decode and preprocess one item -> (DecodedImage, (3, H, W) tensor), or (None,
    reason): never raises. The DataLoader workers here and ``ray_embed``'s decode tasks run it."""
    try:
        return _decode(item, index, preprocess, known)
    # PIL raises many types on corrupt input, a transform may reject an odd mode: every
    # failure becomes a skipped item with its reason.
    except Exception as e:  # noqa: BLE001
        return None, str(e) if isinstance(e, (DataError, OSError)) else f"{type(e).__name__}: {e}"


def _decode(item: ImageItem, i: int, preprocess: Preprocess,
            known: frozenset[str]) -> tuple[DecodedImage | None, torch.Tensor | str]:  # fmt: skip
    if not isinstance(item, Record):
        image = item()
        return DecodedImage(i, image.width, image.height, None, 0), preprocess(image)
    data, captions = item.read()
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 in known:
        return None, ALREADY_KNOWN
    image = decode_image(data)
    return DecodedImage(i, image.width, image.height, sha256, len(data), captions), preprocess(image)


def _collate(samples: list) -> tuple[list, torch.Tensor | None, list[tuple[int, str]]]:
    """-> (every index, [DecodedImage], stacked (n, 3, H, W) or None, [(index, reason)]), stacked
    in the worker, not the main process."""
    good = [(meta, x) for _, meta, x in samples if meta is not None]
    images = torch.stack([x for _, x in good]) if good else None
    skipped = [(i, x) for i, meta, x in samples if meta is None]
    return [i for i, _, _ in samples], [m for m, _ in good], images, skipped  # type: ignore[return-value]


def embed_image_batches(
    engine: Engine,
    preprocess: Preprocess,
    items: Sequence[ImageItem],
    batches: Sequence[Sequence[int]],
    *,
    workers: int = 0,
    known_hashes: frozenset[str] = frozenset(),
    skip_repeats: bool = False,
) -> Iterator[ImageBatch]:
    """Decode ``batches`` (sequences of item indices) in ``workers`` processes and embed them in
    this one, in order. ``known_hashes``: items with these SHA-256s are skipped undecoded;
    ``skip_repeats``: an item whose bytes equal an earlier item's is skipped too."""
    loader = torch.utils.data.DataLoader(
        _Decoder(items, preprocess, known_hashes), batch_sampler=batches, collate_fn=_collate,
        num_workers=min(workers, len(batches)), pin_memory=engine.device.type == "cuda",
    )  # fmt: skip
    seen: set[str] = set()
    for indices, decoded, images, skipped in loader:
        if skip_repeats:
            decoded, images = _drop_repeats(decoded, images, seen, skipped)
        if images is None:
            yield ImageBatch(indices, [], np.zeros((0, engine.embed_dim), np.float32), skipped, 0.0)
            continue
        start = time.perf_counter()
        vectors = engine.encode_images(images).cpu().numpy()  # (rows, embed_dim); .cpu() waits for a GPU
        yield ImageBatch(indices, decoded, vectors, skipped, time.perf_counter() - start)


def _drop_repeats(decoded: list[DecodedImage], images: torch.Tensor | None, seen: set[str],
                  skipped: list[tuple[int, str]]) -> tuple[list[DecodedImage], torch.Tensor | None]:  # fmt: skip
    keep = []
    for row, meta in enumerate(decoded):
        if meta.sha256 in seen:
            skipped.append((meta.index, REPEATED))
        else:
            seen.add(meta.sha256)  # type: ignore[arg-type]
            keep.append(row)
    if len(keep) == len(decoded):
        return decoded, images
    return [decoded[r] for r in keep], (images[keep] if keep else None)  # type: ignore[index]
