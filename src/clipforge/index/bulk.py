"""``clipforge index build --from-embeddings``: an index over embeddings already computed (by
``clipforge embed`` or clip-retrieval), without re-embedding and without loading them all.

The vectors stay in the folder's ``.npy`` shards; SQLite gets each shard's items (metadata
only) and the shard itself in one transaction, shard by shard, then the ANN index of each
modality is built streaming from the shards (compressed.py beyond ``IVF_THRESHOLD``). Killed
part way, the index is marked unfinished (``open`` refuses it with a sentence saying so), and
the same command resumes after the last shard committed.

The model is optional: it is what turns a text (or image) query into a vector, so without one
the index answers vector queries only (``IndexStore.search``). Given one, its embedding size
must match, and, for our folders, the manifest's weights fingerprint too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import SearchIndexError
from .embeddings import EmbeddingFolder, metadata_rows, open_embeddings
from .report import BuildReport
from .shards import describe_shard
from .store import IndexStore

__all__ = ["build_from_embeddings", "parse_bytes"]

Progress = Callable[[int, int], None]  # (shards done, shards in all)


def build_from_embeddings(
    embeddings: str | Path, out: str | Path, *, model: str | None = None, modality: str = "auto", kind: str = "auto",
    memory_budget: int | None = None, tags: Sequence[str] = (), progress: Progress | None = None,
) -> BuildReport:  # fmt: skip
    """Create (or finish) the index at ``out`` over the embedding folder ``embeddings``.

    ``model``: checkpoint or published name of the model that made the embeddings (default: the
    one our manifest names, if any); ``modality``: auto, image, text or both (a combined index:
    one ANN index per modality, searched by name); ``memory_budget``: bytes for the compressed
    index (default compressed.DEFAULT_BUDGET)."""
    start = time.perf_counter()
    folder = open_embeddings(embeddings, modality)
    out = Path(out)
    store = _resume(out, folder) if (out / IndexStore.SQLITE).exists() else _create(out, folder, model, kind, memory_budget)
    with store:
        if memory_budget and store.memory_budget != memory_budget:  # a resumed build may be given more
            store.memory_budget = memory_budget
            store.db.set_info({"memory_budget": str(memory_budget)})
        done = {s.path for vs in store.vector_sets.values() for s in vs.shards.shards}
        for i, shard in enumerate(folder.shards):
            files = {m: str(p.resolve()) for m, p in shard.vectors.items()}
            if set(files.values()) <= done:
                continue
            first_id = store.next_id
            described = {m: describe_shard(p, first_id) for m, p in files.items()}
            store.add_shard(metadata_rows(folder, shard), described, tags)  # committed here
            if progress:
                progress(i + 1, len(folder.shards))
        store.rebuild()  # the ANN index of each modality, streamed from the shards
        store.db.set_info({"bulk_done": "1"})
        report = BuildReport(str(store.root), added=folder.rows, kind=store.ann.kind, total=store.count())
    report.seconds = time.perf_counter() - start
    return report


def _create(out: Path, folder: EmbeddingFolder, model: str | None, kind: str, memory_budget: int | None) -> IndexStore:
    model_ref, config = _model(model or folder.model, folder)
    info = {"bulk_source": str(folder.root), "bulk_done": "0", "bulk_layout": folder.layout}
    return IndexStore.create(out, model_ref=model_ref, model_config=config, kind=kind, modalities=folder.modalities,
                             memory_budget=memory_budget, info=info)  # fmt: skip


def _resume(out: Path, folder: EmbeddingFolder) -> IndexStore:
    store = IndexStore.resume(out) if _unfinished(out) else None
    if store is None:
        raise SearchIndexError(f"{out} already holds an index; choose another --out")
    if store.info.get("bulk_source") != str(folder.root) or store.modalities != folder.modalities:
        store.close()
        raise SearchIndexError(f"{out} is an unfinished build from {store.info.get('bulk_source')}; finish it with "
                               "those embeddings, or choose another --out")  # fmt: skip
    return store


def _unfinished(out: Path) -> bool:
    import sqlite3

    with sqlite3.connect(f"file:{out / IndexStore.SQLITE}?mode=ro", uri=True) as conn:
        try:
            row = conn.execute("SELECT value FROM info WHERE key = 'bulk_done'").fetchone()
        except sqlite3.DatabaseError:
            return False
    return row is not None and row[0] == "0"


def _model(model: str | None, folder: EmbeddingFolder) -> tuple[str, dict]:
    """-> (model_ref, model_config) stored in the index; without a model, vector queries only."""
    if model is None:
        return "", {"embed_dim": folder.dim}
    from .embedder import load_embedder

    embedder = load_embedder(model)
    if embedder.dim != folder.dim:
        raise SearchIndexError(f"{model!r} makes {embedder.dim}-d embeddings, {folder.root} holds {folder.dim}-d; "
                               "give the model that made them")  # fmt: skip
    _check_fingerprint(embedder, folder)
    return embedder.model_ref, embedder.model.config.to_dict()


def _check_fingerprint(embedder, folder: EmbeddingFolder) -> None:
    """Our manifest fingerprints the weights that embedded: other weights would make text
    queries meaningless against these vectors."""
    expected, precision = folder.manifest.get("model_fingerprint"), folder.manifest.get("precision")
    if not expected or not precision:
        return
    from ..inference.engine import model_fingerprint

    if model_fingerprint(embedder.model, precision) != expected:
        raise SearchIndexError(f"{folder.root} was embedded with other weights than {embedder.model_ref!r} "
                               f"(manifest model {folder.model!r}); give that model, or none for vector queries only")  # fmt: skip


def parse_bytes(text: str) -> int:
    """'2GiB', '512MiB', '1.5G', '1000000' -> bytes (K/M/G/T: powers of 1024, with or without iB)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1:] if s[-1:] in units else ""
    try:
        value = float(s[: len(s) - len(unit)] if unit else s)
    except ValueError:
        raise SearchIndexError(f"cannot read {text!r} as a size; use e.g. 2GiB or 512MiB") from None
    if value <= 0:
        raise SearchIndexError(f"a memory budget must be positive, not {text!r}")
    return int(value * units[unit])
