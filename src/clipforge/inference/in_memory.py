"""Embed many images or texts in memory: parallel image decoding, batched inference through the
``Engine``, normalised output. (For collections too large for memory, or runs worth resuming,
``stream.embed_collection`` writes shards instead; both run the same batched loop,
``image_batches.embed_image_batches``.)

Unreadable images are skipped and reported, never fatal: one bad file in a folder of thousands
should not cost the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import DataError
from ..images import list_image_files
from ..models.clip import CLIP
from ..transforms import Preprocess
from .engine import Engine, as_engine
from .image_batches import batch_ranges, embed_image_batches
from .reader import Record

__all__ = ["EmbedResult", "list_images", "embed_images", "embed_records", "embed_texts"]


@dataclass
class EmbedResult:
    embeddings: np.ndarray  # (n, embed_dim) float32, L2-normalised
    items: list[str]  # the path or text of each row
    skipped: dict[str, str] = field(default_factory=dict)  # item -> reason


def list_images(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder (recursive), a single image, or a list of paths -> sorted image paths."""
    if isinstance(source, (str, Path)):
        return list_image_files(source)[0]
    paths = [Path(p) for p in source]
    if not paths:
        raise DataError("no images given; give at least one image path")
    return paths


def embed_images(
    model: CLIP | Engine,
    preprocess: Preprocess,
    paths: Sequence[Path],
    *,
    batch_size: int = 64,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    precision: str = "fp32",
) -> EmbedResult:
    """Image files -> their embeddings in order (unreadable ones left out and listed in ``skipped``).
    ``precision`` applies when a model (not an Engine) is given."""
    records = [Record(str(p)) for p in paths]
    return embed_records(model, preprocess, records, batch_size=batch_size, workers=workers, progress=progress,
                         precision=precision)  # fmt: skip


def embed_records(
    model: CLIP | Engine,
    preprocess: Preprocess,
    records: Sequence[Record],
    *,
    batch_size: int = 64,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    precision: str = "fp32",
) -> EmbedResult:
    """``embed_images`` for any records (files, shard samples): items and skipped are named by
    each record's ``ref``."""
    engine = as_engine(model, precision, batch_size)
    rows: list[np.ndarray] = []
    items: list[str] = []
    skipped: dict[str, str] = {}
    batches = batch_ranges(0, len(records), batch_size)
    for batch in embed_image_batches(engine, preprocess, records, batches, workers=workers):
        rows.append(batch.vectors)
        items.extend(records[d.index].ref for d in batch.images)
        skipped.update({records[i].ref: why for i, why in batch.skipped})
        if progress:
            progress(len(batch.indices))
    return EmbedResult(_stack(rows, engine.embed_dim), items, skipped)


def embed_texts(
    model: CLIP | Engine, texts: Sequence[str], *, batch_size: int = 256, precision: str = "fp32"
) -> EmbedResult:
    """Texts -> their embeddings in order (long texts truncated to the context length)."""
    engine = as_engine(model, precision, batch_size)
    vectors = engine.encode_texts(list(texts), batch_size=batch_size) if texts else None
    return EmbedResult(_stack([vectors.numpy()] if vectors is not None else [], engine.embed_dim), list(texts))


def _stack(rows: list[np.ndarray], embed_dim: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, embed_dim), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32, copy=False)
