"""The operations behind ``clipforge index build|add|delete|info``.

Each batch of images is committed to SQLite as soon as it is embedded, so an interrupted ``add``
keeps every batch before the interruption, and running the same ``add`` again resumes: files
already stored (same SHA-256) are recognised before they are decoded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from ..images import list_image_files
from ..inference.image_batches import ALREADY_KNOWN, REPEATED, batch_ranges, embed_image_batches
from ..inference.reader import Record
from .embedder import load_embedder
from .report import BuildReport, format_report
from .records import image_record
from .search import check_model
from .store import AddResult, IndexStore

__all__ = ["BuildReport", "build_index", "add_images", "add_to_store", "delete_items", "format_report"]

Progress = Callable[[int, int], None]  # (files done, files in all)


def build_index(
    source: str | Path, model: str, out: str | Path, *, kind: str = "auto", batch_size: int = 64, workers: int = 2,
    near_duplicate: float | None = None, tags: Sequence[str] = (), progress: Progress | None = None,
) -> BuildReport:  # fmt: skip
    """Create an index at ``out`` with ``model`` and add every image under ``source``."""
    embedder = load_embedder(model)
    list_image_files(source)  # fail on an empty source before creating anything
    store = IndexStore.create(out, model_ref=embedder.model_ref, model_config=embedder.model.config.to_dict(), kind=kind)
    with store:
        return add_to_store(store, embedder, source, batch_size, workers, near_duplicate, tags, progress)


def add_images(
    index: str | Path, source: str | Path, *, batch_size: int = 64, workers: int = 2,
    near_duplicate: float | None = None, tags: Sequence[str] = (), progress: Progress | None = None,
) -> BuildReport:  # fmt: skip
    """Add the images under ``source`` to an existing index, with the index's own model."""
    with IndexStore.open(index) as store:
        embedder = load_embedder(store.model_ref)
        check_model(store, embedder)
        return add_to_store(store, embedder, source, batch_size, workers, near_duplicate, tags, progress)


def add_to_store(store, embedder, source, batch_size, workers, near_duplicate, tags, progress) -> BuildReport:
    """Embed the images under ``source`` into an open writable store (IndexStore or MilvusStore:
    both take ``add``/``optimize``/``flush``), committing each batch as it comes."""
    start = time.perf_counter()
    paths, root = list_image_files(source)
    report, done, result = BuildReport(str(store.root)), 0, AddResult()
    batches = embed_image_batches(
        embedder.engine, embedder.preprocess, [Record(str(p)) for p in paths], batch_ranges(0, len(paths), batch_size),
        workers=workers, known_hashes=store.known_hashes(), skip_repeats=True,
    )  # fmt: skip
    for batch in batches:
        records = [image_record(paths[d.index], root, d, tags) for d in batch.images]
        result.merge(store.add(records, batch.vectors, near_duplicate=near_duplicate))  # committed here
        for i, why in batch.skipped:
            if why in (ALREADY_KNOWN, REPEATED):
                report.duplicates += 1
            else:
                report.unreadable[str(paths[i])] = why
        done += len(batch.indices)
        if progress:
            progress(done, len(paths))
    store.optimize()
    store.flush()
    report.added, report.near_duplicates = len(result.ids), len(result.near_duplicates)
    report.duplicates += len(result.duplicates)
    report.seconds, report.kind, report.total = time.perf_counter() - start, store.kind_label, store.count()
    return report


def delete_items(index: str | Path, ids: Sequence[int]) -> list[int]:
    """Delete items by id -> the ids that existed (unknown ids are ignored and not returned)."""
    with IndexStore.open(index) as store:
        return store.delete(list(ids))
