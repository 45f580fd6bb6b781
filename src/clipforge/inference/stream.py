"""Embed a whole collection into an output folder of shards, resumable after a crash: the
reader (``reader.py``: source -> records), the shared batch loop (``image_batches.py``) and the
writer (``writer.py``: shards, done markers, manifest, resume check), put together.

Shard k holds the items ``[k * shard_size, (k + 1) * shard_size)`` of the source order, minus the
unreadable ones, so a shard's rows depend only on the source and the shard size: a re-run skips
the shards with a done marker and recomputes the rest. With ``shard_index=I, num_shards=N`` this
process does only the shards k with ``k % N == I``, so N independent processes (a Slurm array,
Spark tasks, several machines over one shared folder) run the same command and together write
the same folder one process would; whoever finishes last writes the final manifest.

Model time and wall time are both measured, so the summary shows whether decoding or the model
is the bottleneck. ``ray_embed.py`` runs the same plan on a Ray cluster.
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

__all__ = ["EmbedSummary", "ShardPlan", "ProgressFn", "embed_collection", "check_arguments", "output_settings",
           "plan_shards", "summarize"]  # fmt: skip

ProgressFn = Callable[[int, int], None]  # (items done, items in this process's shards)


@dataclass
class EmbedSummary:
    """What ``embed_collection`` did. Rates count only the items processed by this call."""

    out: Path
    kind: str  # "image" or "text"
    items: int  # in the source
    rows: int  # embeddings in OUT, all finished shards (of every worker)
    skipped: int  # items left out (unreadable), all finished shards
    shards: int  # finished in OUT, by any worker
    shards_reused: int  # this process's shards finished by an earlier run, not recomputed
    processed: int  # items read and embedded (or skipped) by this call
    embedded: int  # rows embedded by this call
    engine_seconds: float  # time inside the engine
    wall_seconds: float  # time of the whole call, decoding and writing included
    precision: str
    embed_dim: int
    skipped_items: list[dict] = field(default_factory=list)  # {"index", "path", "reason"}
    shards_total: int = 0
    shards_written: int = 0  # by this call
    complete: bool = True  # every shard done and the final manifest written
    shard_index: int = 0
    num_shards: int = 1

    @property
    def model_items_per_s(self) -> float:
        return self.embedded / self.engine_seconds if self.engine_seconds > 0 else 0.0

    @property
    def end_to_end_items_per_s(self) -> float:
        return self.processed / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class ShardPlan:
    """The output shards this process owns (``shard % num_shards == shard_index``) and which of
    them are done already."""

    writer: EmbeddingWriter
    collection: Collection
    shard_size: int
    mine: list[int]
    finished: dict[int, dict]  # shard -> marker, done before this call (by any worker)
    shard_index: int = 0
    num_shards: int = 1

    @property
    def todo(self) -> list[int]:
        return [k for k in self.mine if k not in self.finished]

    @property
    def reused(self) -> int:
        return sum(k in self.finished for k in self.mine)

    def items(self, shard: int) -> range:
        """The source items of ``shard``."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.collection)))

    def items_total(self) -> int:
        return sum(len(self.items(k)) for k in self.mine)

    def items_reused(self) -> int:
        return sum(len(self.items(k)) for k in self.mine if k in self.finished)


def check_arguments(shard_size: int, batch_size: int | None, dtype: str, kind: str, preprocess: object,
                    shard_index: int = 0, num_shards: int = 1, overwrite: bool = False) -> None:  # fmt: skip
    if shard_size < 1 or (batch_size is not None and batch_size < 1):
        raise ClipforgeError("--shard-size and --batch-size must be positive")
    if dtype not in ("float32", "float16"):
        raise ClipforgeError(f"unknown --dtype {dtype!r}; use float32 or float16")
    if kind == "image" and preprocess is None:
        raise ClipforgeError("embedding images needs the model's preprocess (clipforge.load returns it)")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ClipforgeError(f"--shard-index must be in 0..{num_shards - 1} with --num-shards {num_shards}")
    if overwrite and num_shards > 1:
        raise ClipforgeError("--overwrite with --num-shards would let each worker delete the others' shards; "
                             "empty --out once before starting the workers")  # fmt: skip


def output_settings(collection: Collection, *, fingerprint: str, precision: str, embed_dim: int, dtype: str,
                    shard_size: int) -> dict:  # fmt: skip
    """What a resumed run (or another worker) must share with the one that started OUT."""
    return {"kind": collection.kind, "model_fingerprint": fingerprint, "precision": precision, "dtype": dtype,
            "shard_size": shard_size, "embed_dim": embed_dim, "source_fingerprint": collection.fingerprint,
            "items": len(collection)}  # fmt: skip


def plan_shards(collection: Collection, out: str | Path, settings: dict, *, dtype: str, overwrite: bool,
                model_ref: str | None, shard_index: int = 0, num_shards: int = 1) -> ShardPlan:  # fmt: skip
    """Open OUT (checked against ``settings``) and list this process's shards."""
    writer = EmbeddingWriter(Path(out), collection.kind, dtype)
    total = -(-len(collection) // settings["shard_size"])
    writer.open(settings, overwrite=overwrite, model=model_ref, source=collection.spec, shards_total=total)
    mine = [k for k in range(total) if k % num_shards == shard_index]
    return ShardPlan(writer, collection, settings["shard_size"], mine, writer.finished(), shard_index, num_shards)


def summarize(plan: ShardPlan, *, precision: str, embed_dim: int, processed: int, embedded: int,
              engine_seconds: float, wall: float, written: int) -> EmbedSummary:  # fmt: skip
    """Write the final manifest if every shard is done (by anyone), and say what OUT holds."""
    listing = plan.collection.skipped
    complete = plan.writer.finalize(listing)
    markers = plan.writer.finished()
    skipped = listing + [s for k in sorted(markers) for s in markers[k]["skipped"]]
    return EmbedSummary(
        out=plan.writer.out, kind=plan.collection.kind, items=len(plan.collection),
        rows=sum(m["rows"] for m in markers.values()), skipped=len(skipped), shards=len(markers),
        shards_reused=plan.reused, processed=processed, embedded=embedded, engine_seconds=engine_seconds,
        wall_seconds=wall, precision=precision, embed_dim=embed_dim, skipped_items=skipped,
        shards_total=plan.writer.shards_total, shards_written=written, complete=complete,
        shard_index=plan.shard_index, num_shards=plan.num_shards,
    )  # fmt: skip


@dataclass
class _Run:
    """State of one call: the plan, the engine, the running totals."""

    plan: ShardPlan
    engine: Engine
    progress: ProgressFn | None
    on_shard: Callable[[int], None] | None
    engine_seconds: float = 0.0
    processed: int = 0
    embedded: int = 0
    written: int = 0

    def finish_shard(self, shard: int, vectors: list[np.ndarray], rows: list[dict], skipped: list[dict]) -> None:
        dim = self.engine.embed_dim
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)  # (rows, embed_dim)
        self.plan.writer.write_shard(shard, stacked, rows, skipped)
        self.written += 1
        if self.on_shard:
            self.on_shard(shard)

    def advance(self, n: int) -> None:
        self.processed += n
        if self.progress:
            self.progress(self.plan.items_reused() + self.processed, self.plan.items_total())


def _image_rows(records: list, batch: ImageBatch) -> tuple[list[dict], list[dict]]:
    """-> (metadata rows, skipped entries) of one batch."""
    rows = [{"index": d.index, "path": records[d.index].path, "key": records[d.index].key,
             "caption": d.captions[0] if d.captions else None, "width": d.width, "height": d.height,
             "sha256": d.sha256} for d in batch.images]  # fmt: skip
    return rows, [{"index": i, "path": records[i].ref, "reason": why} for i, why in batch.skipped]


def _run_images(run: _Run, preprocess: Preprocess, batch_size: int, workers: int) -> None:
    plan = run.plan
    shards = [(k, batch_ranges(plan.items(k).start, plan.items(k).stop, batch_size)) for k in plan.todo]
    flat = [b for _, batches in shards for b in batches]  # none straddles a shard
    if not flat:
        return
    batches = embed_image_batches(run.engine, preprocess, plan.collection.records, flat, workers=workers)
    for shard, shard_batches in shards:
        vectors, rows, skipped = [], [], []
        for _ in shard_batches:
            batch = next(batches)
            run.engine_seconds += batch.engine_seconds
            run.embedded += len(batch.images)
            vectors.append(batch.vectors)
            batch_rows, batch_skipped = _image_rows(plan.collection.records, batch)
            rows.extend(batch_rows)
            skipped.extend(batch_skipped)
            run.advance(len(batch.indices))
        run.finish_shard(shard, vectors, rows, skipped)


def _run_texts(run: _Run, batch_size: int) -> None:
    texts, lines = run.plan.collection.texts, run.plan.collection.lines
    for shard in run.plan.todo:
        items = run.plan.items(shard)
        vectors, rows = [], []
        for batch in batch_ranges(items.start, items.stop, batch_size):
            chunk = [texts[i] for i in batch]
            start = time.perf_counter()
            vectors.append(run.engine.encode_texts(chunk).numpy())  # (len(chunk), embed_dim)
            run.engine_seconds += time.perf_counter() - start
            run.embedded += len(batch)
            rows.extend({"index": lines[i], "text": texts[i]} for i in batch)
            run.advance(len(batch))
        run.finish_shard(shard, vectors, rows, [])


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
    shard_index: int = 0,
    num_shards: int = 1,
    progress: ProgressFn | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> EmbedSummary:
    """Embed every item of ``source`` (see ``open_images`` / ``open_texts``; ``kind`` says which)
    into shards under ``out``; a re-run with the same arguments resumes where a killed one stopped.

    ``precision`` applies when a model (not an Engine) is given. ``shard_index`` / ``num_shards``:
    do only the output shards k with ``k % num_shards == shard_index`` (one of N workers sharing
    ``out``). ``on_shard(k)`` is called after shard k is safely on disk. Unreadable images are
    skipped and listed, never fatal.
    """
    started = time.perf_counter()
    kind = source.kind if isinstance(source, Collection) else kind
    check_arguments(shard_size, batch_size, dtype, kind, preprocess, shard_index, num_shards, overwrite)
    engine = as_engine(engine_or_model, precision)
    collection = source if isinstance(source, Collection) else (open_images if kind == "image" else open_texts)(source)
    settings = output_settings(collection, fingerprint=engine.fingerprint, precision=engine.precision,
                               embed_dim=engine.embed_dim, dtype=dtype, shard_size=shard_size)  # fmt: skip
    plan = plan_shards(collection, out, settings, dtype=dtype, overwrite=overwrite, model_ref=model_ref,
                       shard_index=shard_index, num_shards=num_shards)  # fmt: skip
    run = _Run(plan, engine, progress, on_shard)
    run.advance(0)  # show the reused shards as done
    if collection.kind == "image":
        workers = default_workers() if workers is None else workers
        _run_images(run, preprocess, batch_size or engine.config.image_batch_size, workers)  # type: ignore[arg-type]
    else:
        _run_texts(run, batch_size or engine.config.text_batch_size)
    return summarize(plan, precision=engine.precision, embed_dim=engine.embed_dim, processed=run.processed,
                     embedded=run.embedded, engine_seconds=run.engine_seconds,
                     wall=time.perf_counter() - started, written=run.written)  # fmt: skip
