"""The ``clipforge embed`` job, as one function the CLI calls.

``--out DIR`` streams into resumable shards (``stream.embed_collection``; with ``--ray``, on a Ray
cluster: ``ray_embed.embed_with_ray``); ``--shard-index I --num-shards N`` makes this process one
of N workers over the same folder. ``--out FILE.npy`` keeps the older single-file output (one
.npy plus a .txt of row items) for small collections.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ClipforgeError

if TYPE_CHECKING:
    from ..transforms import Preprocess
    from .engine import Engine
    from .reader import Collection
    from .stream import EmbedSummary

__all__ = ["run_embed", "format_summary"]


def run_embed(
    model_name: str,
    out: Path,
    *,
    images: str | Path | None = None,
    texts: str | Path | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    shard_size: int = 100_000,
    dtype: str = "float32",
    precision: str = "fp32",
    device: str = "cpu",
    overwrite: bool = False,
    compile: bool = False,
    shard_index: int = 0,
    num_shards: int = 1,
    ray: str | None = None,
) -> EmbedSummary | Path:
    """``ray``: None for this process alone, else the Ray cluster's address (see
    ``ray_embed.connect_ray``: HOST:PORT, ``auto``, ``local``)."""
    from ..checkpoint import load
    from .allocator import keep_freed_memory
    from .engine import Engine, EngineConfig
    from .reader import open_images, open_texts
    from .stream import check_arguments, embed_collection

    if (images is None) == (texts is None):
        raise ClipforgeError("give exactly one of --images or --texts")
    if out.suffix == ".npy" and (ray is not None or num_shards > 1):
        raise ClipforgeError("--ray and --num-shards write a folder of shards; give --out a folder, not a .npy file")
    if ray is not None and texts is not None:
        raise ClipforgeError("--ray embeds images; embed texts without --ray (they need no decoding)")
    check_arguments(shard_size, batch_size, dtype, "text" if texts else "image", True, shard_index, num_shards,
                    overwrite)  # before loading anything: a wrong argument is one quick line  # fmt: skip
    collection = open_texts(texts) if texts is not None else open_images(images)  # type: ignore[arg-type]
    model, preprocess = load(model_name)
    if ray is not None:
        return _on_ray(model, preprocess, collection, out, ray, model_name=model_name, workers=workers,
                       batch_size=batch_size or 32, shard_size=shard_size, dtype=dtype, precision=precision,
                       device=device, compile=compile, overwrite=overwrite, shard_index=shard_index,
                       num_shards=num_shards)  # fmt: skip
    keep_freed_memory()  # this process is the embedding job: reuse freed activation memory
    engine = Engine(model, EngineConfig(precision=precision, device=device, compile=compile), copy_model=False)  # type: ignore[arg-type]
    if out.suffix == ".npy":
        return _single_file(engine, preprocess, collection, out, batch_size or 64, workers)
    with _progress_bar(collection.kind) as progress:
        summary = embed_collection(
            engine, preprocess, collection, out, shard_size=shard_size, batch_size=batch_size, workers=workers,
            dtype=dtype, overwrite=overwrite, model_ref=model_name, shard_index=shard_index,
            num_shards=num_shards, progress=progress,
        )  # fmt: skip
    print(format_summary(summary))
    return summary


def _on_ray(model, preprocess, collection, out: Path, address: str, **options) -> EmbedSummary:  # noqa: ANN001
    from .ray_embed import embed_with_ray

    model_name = options.pop("model_name")
    with _progress_bar("image") as progress:
        summary = embed_with_ray(model, preprocess, collection, out, address=address, model_ref=model_name,
                                 progress=progress, **options)  # fmt: skip
    print(format_summary(summary))
    return summary


class _progress_bar:
    """A rich progress bar on stderr, as a ``progress(done, total)`` callback."""

    def __init__(self, kind: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn(f"embedding {kind}s"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self.bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("embed", total=None)

    def __enter__(self):  # noqa: ANN204
        return self

    def __exit__(self, *_: object) -> None:
        self.bar.stop()

    def __call__(self, done: int, total: int) -> None:
        self.bar.start()  # on the first call, not before: an early error stays one clean line
        self.bar.update(self.task, completed=done, total=total)


def format_summary(s: EmbedSummary) -> str:
    """A few lines for people: what was written, what was skipped, and where the time went."""
    unit = "img" if s.kind == "image" else "text"
    lines = [f"wrote {s.out}: {s.rows:,} embeddings ({s.embed_dim}-d, {s.precision}) in {s.shards} shard(s)"
             + (f", {s.shards_reused} finished earlier and kept" if s.shards_reused else "")]  # fmt: skip
    if s.num_shards > 1:
        lines.append(f"worker {s.shard_index} of {s.num_shards} (--shard-index): wrote {s.shards_written} shard(s)")
    if not s.complete:
        lines.append(f"{s.shards} of {s.shards_total} shards done; the other workers write the rest, and whoever "
                     "finishes last writes manifest.json and skipped.jsonl")  # fmt: skip
    if s.skipped:
        lines.append(f"skipped {s.skipped:,} unreadable item(s), listed in {s.out / 'skipped.jsonl'}")
        lines += [f"  {item['path']}: {item['reason']}" for item in s.skipped_items[:5]]
    if s.processed:
        lines.append(f"throughput: model only {s.model_items_per_s:,.1f} {unit}/s, end to end "
                     f"{s.end_to_end_items_per_s:,.1f} {unit}/s "
                     f"({s.processed:,} items in {s.wall_seconds:.1f} s)")  # fmt: skip
        if s.kind == "image" and s.end_to_end_items_per_s < 0.5 * s.model_items_per_s:
            lines.append("  decoding is the bottleneck: more --workers (or faster storage) would help")
    return "\n".join(lines)


def _single_file(
    engine: Engine, preprocess: Preprocess, collection: Collection, out: Path, batch_size: int, workers: int | None
) -> Path:
    """The whole collection into one .npy (float32) and a .txt naming each row's item."""
    from ..checkpoint.io import atomic_path
    from .image_batches import default_workers
    from .in_memory import embed_records, embed_texts

    if collection.kind == "text":
        result = embed_texts(engine, collection.texts, batch_size=batch_size)
    else:
        workers = default_workers() if workers is None else workers
        result = embed_records(engine, preprocess, collection.records, batch_size=batch_size, workers=workers)
    vectors, items, skipped = result.embeddings, result.items, list(result.skipped.items())
    with atomic_path(out, suffix=".npy") as tmp:
        np.save(tmp, vectors)
    with atomic_path(out.with_suffix(".txt")) as tmp:
        tmp.write_text("".join(item.replace("\n", " ") + "\n" for item in items), encoding="utf-8")
    print(f"wrote {out} {vectors.shape} and {out.with_suffix('.txt')}")
    for item, why in [(s["path"], s["reason"]) for s in collection.skipped] + skipped:
        print(f"skipped {item}: {why}")
    return out
