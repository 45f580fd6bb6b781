"""Embed a whole collection into an output folder of shards, resumable after a crash: the
reader (``reader.py``: source -> records), the shared batch loop (``image_batches.py``) and the
writer (``writer.py``: shards, manifest, resume check), put together.

Shard k holds the items ``[k * shard_size, (k + 1) * shard_size)`` of the source order, minus the
unreadable ones, so a shard's rows depend only on the source and the shard size: a re-run skips
the shards the manifest lists as done and recomputes the rest.

Model time and wall time are both measured, so the summary shows whether decoding or the model
is the bottleneck.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ClipforgeError
from ..models.clip import CLIP
from ..transforms import Preprocess
from .engine import Engine, as_engine
from .image_batches import ImageBatch, batch_ranges, default_workers, embed_image_batches
from .reader import Collection, open_images, open_texts
from .writer import EmbeddingWriter

__all__ = ["EmbedSummary", "embed_collection"]

ProgressFn = Callable[[int, int], None]  # (items done, items in the source)


@dataclass
class EmbedSummary:
    """What ``embed_collection`` did. Rates count only the items processed by this call."""

    out: Path
    kind: str  # "image" or "text"
    items: int  # in the source
    rows: int  # embeddings in OUT, all shards
    skipped: int  # items left out (unreadable), all shards
    shards: int
    shards_reused: int  # finished by an earlier run, not recomputed
    processed: int  # items read and embedded (or skipped) by this call
    embedded: int  # rows embedded by this call
    engine_seconds: float  # time inside the engine
    wall_seconds: float  # time of the whole call, decoding and writing included
    precision: str
    embed_dim: int
    skipped_items: list[dict] = field(default_factory=list)  # {"index", "path", "reason"}

    @property
    def model_items_per_s(self) -> float:
        return self.embedded / self.engine_seconds if self.engine_seconds > 0 else 0.0

    @property
    def end_to_end_items_per_s(self) -> float:
        return self.processed / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class _Run:
    """State of one call: the output, what is done, the running totals."""

    writer: EmbeddingWriter
    collection: Collection
    engine: Engine
    shard_size: int
    skipped: list[dict]  # items skipped in this call and in the finished shards before it
    progress: ProgressFn | None
    on_shard: Callable[[int], None] | None
    start: int = 0  # items in the shards finished before this call
    engine_seconds: float = 0.0
    processed: int = 0
    embedded: int = 0

    def finish_shard(self, vectors: list[np.ndarray], rows: list[dict], skipped: list[dict]) -> None:
        dim = self.engine.embed_dim
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)  # (rows, embed_dim)
        self.skipped.extend(skipped)
        shard = self.writer.write_shard(stacked, rows, len(skipped), self.collection.skipped + self.skipped)
        if self.on_shard:
            self.on_shard(shard)

    def advance(self, n: int) -> None:
        self.processed += n
        if self.progress:
            self.progress(self.start + self.processed, len(self.collection))


def _shard_batches(start: int, n: int, shard_size: int, batch_size: int) -> list[list[range]]:
    """Item indices from ``start``, cut into shards, each cut into batches (none straddles a shard)."""
    return [batch_ranges(first, min(first + shard_size, n), batch_size) for first in range(start, n, shard_size)]


def _image_rows(run: _Run, batch: ImageBatch) -> tuple[list[dict], list[dict]]:
    """-> (metadata rows, skipped entries) of one batch."""
    records = run.collection.records
    rows = [{"index": d.index, "path": records[d.index].path, "key": records[d.index].key,
             "caption": d.captions[0] if d.captions else None, "width": d.width, "height": d.height,
             "sha256": d.sha256} for d in batch.images]  # fmt: skip
    return rows, [{"index": i, "path": records[i].ref, "reason": why} for i, why in batch.skipped]


def _run_images(run: _Run, preprocess: Preprocess, batch_size: int, workers: int) -> None:
    shards = _shard_batches(run.writer.shards_done * run.shard_size, len(run.collection), run.shard_size, batch_size)
    flat = [b for shard in shards for b in shard]
    batches = embed_image_batches(run.engine, preprocess, run.collection.records, flat, workers=workers)
    for shard in shards:
        vectors, rows, skipped = [], [], []
        for _ in shard:
            batch = next(batches)
            run.engine_seconds += batch.engine_seconds
            run.embedded += len(batch.images)
            vectors.append(batch.vectors)
            batch_rows, batch_skipped = _image_rows(run, batch)
            rows.extend(batch_rows)
            skipped.extend(batch_skipped)
            run.advance(len(batch.indices))
        run.finish_shard(vectors, rows, skipped)


def _run_texts(run: _Run, batch_size: int) -> None:
    texts, lines = run.collection.texts, run.collection.lines
    for shard in _shard_batches(run.writer.shards_done * run.shard_size, len(texts), run.shard_size, batch_size):
        vectors, rows = [], []
        for batch in shard:
            chunk = [texts[i] for i in batch]
            start = time.perf_counter()
            vectors.append(run.engine.encode_texts(chunk).numpy())  # (len(chunk), embed_dim)
            run.engine_seconds += time.perf_counter() - start
            run.embedded += len(batch)
            rows.extend({"index": lines[i], "text": texts[i]} for i in batch)
            run.advance(len(batch))
        run.finish_shard(vectors, rows, [])


def embed_collection(
    engine_or_model: Engine | CLIP,
    preprocess: Preprocess | None,
    source: str | Path | Collection,
    out: str | Path,
    *,
    kind: str = "image",
    shard_size: int = 100_000,
    batch_size: int | None = None,
    workers: int | None = None,
    dtype: str = "float32",
    precision: str = "fp32",
    overwrite: bool = False,
    model_ref: str | None = None,
    progress: ProgressFn | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> EmbedSummary:
    """Embed every item of ``source`` (see ``open_images`` / ``open_texts``; ``kind`` says which)
    into shards under ``out``; a re-run with the same arguments resumes where a killed one stopped.

    ``precision`` applies when a model (not an Engine) is given. ``on_shard(k)`` is called after
    shard k is safely on disk. Unreadable images are skipped and listed, never fatal.
    """
    started = time.perf_counter()
    kind = source.kind if isinstance(source, Collection) else kind
    _check_arguments(shard_size, batch_size, dtype, kind, preprocess)
    engine = as_engine(engine_or_model, precision)
    collection = source if isinstance(source, Collection) else (open_images if kind == "image" else open_texts)(source)
    writer = EmbeddingWriter(Path(out), collection.kind, dtype)
    settings = {"kind": collection.kind, "model_fingerprint": engine.fingerprint, "precision": engine.precision,
                "dtype": dtype, "shard_size": shard_size, "embed_dim": engine.embed_dim,
                "source_fingerprint": collection.fingerprint, "items": len(collection)}  # fmt: skip
    writer.open(settings, overwrite=overwrite, model=model_ref, source=collection.spec,
                shards_total=-(-len(collection) // shard_size))  # fmt: skip
    done_items = min(writer.shards_done * shard_size, len(collection))
    run = _Run(writer, collection, engine, shard_size, writer.read_skipped(done_items), progress, on_shard,
               start=done_items)  # fmt: skip
    reused = writer.shards_done
    run.advance(0)  # show the reused shards as done
    if collection.kind == "image":
        workers = default_workers() if workers is None else workers
        _run_images(run, preprocess, batch_size or engine.config.image_batch_size, workers)  # type: ignore[arg-type]
    else:
        _run_texts(run, batch_size or engine.config.text_batch_size)
    return _summary(run, reused, time.perf_counter() - started)


def _check_arguments(shard_size: int, batch_size: int | None, dtype: str, kind: str, preprocess: object) -> None:
    if shard_size < 1 or (batch_size is not None and batch_size < 1):
        raise ClipforgeError("--shard-size and --batch-size must be positive")
    if dtype not in ("float32", "float16"):
        raise ClipforgeError(f"unknown --dtype {dtype!r}; use float32 or float16")
    if kind == "image" and preprocess is None:
        raise ClipforgeError("embedding images needs the model's preprocess (clipforge.load returns it)")


def _summary(run: _Run, reused: int, wall: float) -> EmbedSummary:
    shards = run.writer.manifest["shards"]
    return EmbedSummary(
        out=run.writer.out, kind=run.collection.kind, items=len(run.collection),
        rows=sum(s["rows"] for s in shards), skipped=sum(s["skipped"] for s in shards) + len(run.collection.skipped),
        shards=len(shards), shards_reused=reused, processed=run.processed, embedded=run.embedded,
        engine_seconds=run.engine_seconds, wall_seconds=wall, precision=run.engine.precision,
        embed_dim=run.engine.embed_dim, skipped_items=run.collection.skipped + run.skipped,
    )  # fmt: skip
