"""A search index on disk: SQLite (metadata and vectors, the source of truth) + FAISS (a cache).

Layout of an index folder::

    meta.sqlite      items (metadata), vectors (float32 blobs), shards, info (model, index parameters)
    vectors.faiss    the ANN index of the image vectors, over the same ids; rebuilt when missing or stale
    text_vectors.faiss   the same for text (caption) vectors, in a text or combined index
    files/           images uploaded through the service (content-addressed by SHA-256)
    thumbs/          thumbnail cache
    .lock            locked (lockf) by the one process that may write

Commit order, and why it is safe to be killed at any point:

1. ``add``: one SQLite transaction inserts the items and their vectors (WAL, synchronous=FULL);
   only after COMMIT are the vectors added to the in-memory FAISS index.
2. ``delete``: one SQLite transaction deletes the rows; then the ids leave FAISS.
3. ``flush``: the FAISS file is written to a temp file, fsynced and renamed over the old one.

So SQLite always holds everything committed, and the FAISS file lags behind it by some adds and
deletes.

An index built from embeddings (bulk.py) keeps its bulk vectors in the embedding folder's
``.npy`` shards, read row by row where needed (vectors.py, shards.py), and SQLite records each shard
with its items in one transaction; ``open`` checks every shard is there, whole and unchanged.
Such an index beyond ``IVF_THRESHOLD`` vectors gets the compressed kind (compressed.py): PQ codes
in RAM, exact re-ranking from the shards. Vectors added later are blobs, as in any index.

An index holds one or two modalities: image vectors, text (caption) vectors, or both; each has
its own ANN index, and every search names the modality it searches (the first by default). ``open`` reconciles by id: ids in SQLite but not FAISS are added from the vectors
table, ids in FAISS but not SQLite are removed. Ids come from AUTOINCREMENT, so a deleted id is
never reused and a stale FAISS entry can never be mistaken for a new item.

This module keeps that order; the parts are elsewhere: metadata.py (SQLite), lock.py (the
write lock), choose.py, ann.py and compressed.py (FAISS), vectors.py and shards.py (where vectors
are kept), ann_search.py (exact filters), duplicates.py, uploads.py (files the index owns).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import SearchIndexError
from .ann import AnnIndex
from .ann_search import Hits, search_batch, search_one
from .choose import build, choose_kind, load_index, needs_rebuild, new_index
from .compressed import DEFAULT_BUDGET, build_compressed
from .duplicates import AddResult, select_new
from .records import ImageRecord
from .filters import SearchFilter
from .lock import WriteLock
from .memory import return_freed_memory
from .metadata import MODALITIES, IndexedItem, MetadataDB
from .shards import Shard, ShardSet
from .uploads import FILES, remove_item_files, store_upload
from .vectors import VectorSet

__all__ = ["IndexedItem", "AddResult", "IndexStore", "id_differences"]

# A filtered subset this small is scored exactly from its stored vectors: cheaper than an
# IVF or pqfs search with a selector, and exact by construction.
EXACT_SUBSET = 20_000


def id_differences(expected: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids expected but not present, ids present but not expected), ascending. With dense
    ids (the usual case: AUTOINCREMENT) through two bitmaps of one byte per id: at 10M ids that
    is 20 MB, where ``np.setdiff1d`` sorts copies of both arrays (~0.5 GB)."""
    top = int(max(expected.max(initial=0), present.max(initial=0))) + 1
    if top > 4 * (len(expected) + len(present)) + 1024:  # sparse ids: sort instead
        return np.setdiff1d(expected, present), np.setdiff1d(present, expected)
    want, have = np.zeros(top, dtype=bool), np.zeros(top, dtype=bool)
    want[expected] = True
    have[present] = True
    return np.flatnonzero(want & ~have), np.flatnonzero(have & ~want)


class IndexStore:
    """Open with ``IndexStore.create(...)`` or ``IndexStore.open(path)``; close when done.

    All methods are thread-safe (one lock: SQLite work per query is tiny, and FAISS must not be
    searched while it is being modified).
    """

    SQLITE, FAISS, LOCK = "meta.sqlite", "vectors.faiss", ".lock"
    ANN_FILES = {"image": FAISS, "text": "text_vectors.faiss"}  # modality -> its FAISS file

    def __init__(self, root: Path, db: MetadataDB, write_lock: WriteLock | None) -> None:
        self.root, self.db, self._write_lock = root, db, write_lock
        self.conn, self.info = db.conn, db.info  # the same objects: tests and tools query them
        self._lock = threading.RLock()
        self.anns: dict[str, AnnIndex] = {}  # modality -> its ANN index (loaded when searchable)
        self.vector_sets = {m: VectorSet(m, db, ShardSet(db.shards(m))) for m in self.modalities}
        self._dirty: set[str] = set()  # modalities whose ANN index changed since the last flush
        self.exact_subset = EXACT_SUBSET
        self.memory_budget = int(self.info.get("memory_budget", DEFAULT_BUDGET))
        # A read-only searchable store follows the writer: before each search it reconciles
        # FAISS in memory when SQLite says another connection committed (see refresh).
        self._seen_version: int | None = None

    # ---- opening and closing -------------------------------------------------------------
    @classmethod
    def create(
        cls, root: str | Path, *, model_ref: str, model_config: dict, kind: str = "auto",
        modalities: tuple[str, ...] = ("image",), memory_budget: int | None = None, info: dict[str, str] | None = None,
    ) -> "IndexStore":  # fmt: skip
        """A new, empty index folder (refuses to overwrite an existing index). ``modalities``:
        which vectors it holds (image, text or both; the first is what searches use by default);
        ``memory_budget``: bytes the compressed kind may take (compressed.DEFAULT_BUDGET);
        ``info``: more info values, written in the same transaction."""
        root = Path(root)
        if (root / cls.SQLITE).exists():
            raise SearchIndexError(f"{root} already holds an index; use `clipforge index add` or choose another --out")
        choose_kind(0, kind)  # validates the name
        if not modalities or len(set(modalities)) != len(modalities) or not set(modalities) <= set(MODALITIES):
            raise SearchIndexError(f"modalities must be image, text or both, not {', '.join(modalities) or 'none'}")
        root.mkdir(parents=True, exist_ok=True)
        write_lock = WriteLock.take(root / cls.LOCK)
        info = {
            **(info or {}), "model": model_ref, "model_config": json.dumps(model_config), "embed_dim": str(model_config["embed_dim"]),
            "kind": kind, "created": str(time.time()), "modalities": ",".join(modalities),
            **({"memory_budget": str(int(memory_budget))} if memory_budget else {}),
        }  # fmt: skip
        store = cls(root, MetadataDB.create(root / cls.SQLITE, info), write_lock)
        for m in store.modalities:
            store.anns[m] = new_index("flat", store.dim)
        store._dirty = set(store.modalities)
        store.flush()
        return store

    @classmethod
    def resume(cls, root: str | Path) -> "IndexStore":
        """Open an unfinished bulk build (bulk.py) to go on with it: writable, FAISS not loaded
        (``rebuild`` makes it once every shard is in)."""
        return cls.open(root, writable=True, _resuming=True)

    @classmethod
    def open(cls, root: str | Path, *, writable: bool = True, searchable: bool = False, _resuming: bool = False) -> "IndexStore":
        """Open an index; ``writable`` takes the write lock and loads + reconciles FAISS.

        ``searchable`` loads FAISS into a read-only store too, reconciled with SQLite in memory
        only (or built in memory if the file is missing or damaged), so any number of read-only
        processes can search an index while one process writes it."""
        root = Path(root)
        if not (root / cls.SQLITE).is_file():
            raise SearchIndexError(f"no index at {root}; build one with `clipforge index build SOURCE --model M --out {root}`")
        write_lock = WriteLock.take(root / cls.LOCK) if writable else None
        db = None
        try:
            db = MetadataDB.open(root / cls.SQLITE, readonly=not writable)
            store = cls(root, db, write_lock)
            store.check_shards()
            if store.info.get("bulk_done") == "0" and not _resuming:
                raise SearchIndexError(
                    f"{root} is an unfinished build from {store.info.get('bulk_source')}; run the same "
                    "`clipforge index build --from-embeddings` again to finish it (or delete the folder)"
                )
        except SearchIndexError:
            if db is not None:
                db.close()
            if write_lock is not None:
                write_lock.release()
            raise
        if writable:
            store._remove_stale_temp_files()
        if (writable or searchable) and not _resuming:
            if not writable:
                store._seen_version = db.data_version()  # before loading: a commit during the load is caught
            store._load_ann(persist=writable)
        return store

    def check_shards(self) -> None:
        """Every embedding shard the index reads is there, whole and unchanged, or
        SearchIndexError naming the first that is not (see shards.ShardSet.check)."""
        for vector_set in self.vector_sets.values():
            vector_set.shards.check()

    def close(self) -> None:
        with self._lock:
            if self._write_lock is not None:
                self.flush()
            for vector_set in self.vector_sets.values():
                vector_set.shards.close()
            self.db.close()
            if self._write_lock is not None:
                self._write_lock.release()
            self._write_lock = None

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ---- properties ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.db.dim

    @property
    def model_ref(self) -> str:
        return self.info["model"]

    @property
    def model_config(self) -> dict:
        return json.loads(self.info["model_config"])

    @property
    def files_dir(self) -> Path:
        return self.root / FILES

    @property
    def modalities(self) -> tuple[str, ...]:
        """What the index's vectors embed: ("image",), ("text",) or ("image", "text")."""
        return tuple(self.info.get("modalities", "image").split(","))

    @property
    def modality(self) -> str:
        """The modality searched by default (and that ``add`` writes): the first."""
        return self.modalities[0]

    @property
    def ann(self) -> AnnIndex | None:
        """The default modality's ANN index."""
        return self.anns.get(self.modality)

    @ann.setter
    def ann(self, value: AnnIndex) -> None:
        self.anns[self.modality] = value

    @property
    def kind_label(self) -> str:
        """What build reports name as the index kind: the default modality's ANN kind."""
        return self.ann.kind if self.ann is not None else "none"

    def _modality(self, modality: str | None) -> str:
        m = modality or self.modality
        if m not in self.modalities:
            raise SearchIndexError(f"this index holds {' and '.join(self.modalities)} vectors, not {m}; "
                                   "build it with them (`clipforge index build --from-embeddings ... --modality`)")  # fmt: skip
        return m

    def _key(self, modality: str, name: str) -> str:
        """The info key of an ANN parameter: the default modality's unprefixed (as always)."""
        return name if modality == self.modality else f"{modality}_{name}"

    def count(self) -> int:
        with self._lock:
            return self.db.count()

    def summary(self) -> dict[str, Any]:
        """What `clipforge index info` prints."""
        with self._lock:
            folders, first, last = self.db.summary_counts()
        out = {
            "path": str(self.root), "items": self.count(), "folders": folders, "model": self.model_ref,
            "embed_dim": self.dim, "kind_requested": self.info.get("kind", "auto"),
            "added_first": first, "added_last": last, "modalities": list(self.modalities),
        }  # fmt: skip
        out.update(self._ann_summary(self.modality))
        for m in self.modalities[1:]:
            out[m] = self._ann_summary(m)
        return out

    def _ann_summary(self, m: str) -> dict[str, Any]:
        ann, shards = self.anns.get(m), self.vector_sets[m].shards
        if ann is not None:
            out = dict(kind=ann.kind, faiss_vectors=ann.ntotal, nlist=ann.nlist, nprobe=ann.nprobe)
            if hasattr(ann, "factory"):
                out.update(factory=ann.factory, rerank=ann.rerank)
        else:
            out = dict(kind=self.info.get(self._key(m, "ann_kind"), "flat"), nprobe=int(self.info.get(self._key(m, "nprobe"), 1)))
        if self._key(m, "calibrated_recall") in self.info:
            out["calibrated_recall_at_10"] = float(self.info[self._key(m, "calibrated_recall")])
        if len(shards):
            out.update(vectors_in_shards=shards.rows, shards=len(shards))
        return out

    # ---- FAISS cache: load, reconcile, rebuild, flush -----------------------------------
    def _read_ann(self, m: str) -> AnnIndex | None:
        """The saved FAISS index of modality m, or None when it is missing, truncated or foreign."""
        try:
            ann = load_index(self.root / self.ANN_FILES[m], nprobe=int(self.info.get(self._key(m, "nprobe"), 1)))
        except (RuntimeError, SearchIndexError, OSError):
            return None
        return self._attach(m, ann) if ann.dim == self.dim else None

    def _attach(self, m: str, ann: AnnIndex) -> AnnIndex:
        """Give a compressed index the vectors it re-ranks with, and its calibrated re-ranking."""
        if hasattr(ann, "vectors_of"):
            ann.vectors_of = self.vector_sets[m].get
            ann.rerank = int(self.info.get(self._key(m, "rerank"), ann.rerank))
        return ann

    def _load_ann(self, persist: bool) -> None:
        """The saved FAISS indexes made to match SQLite, or built afresh when missing or
        damaged; saved only when ``persist`` (a read-only store writes nothing)."""
        for m in self.modalities:
            ann = self._read_ann(m)
            if ann is None and persist:
                self.rebuild(modality=m)  # and save
                continue
            self.anns[m] = ann if ann is not None else self._built(m, self.info.get("kind", "auto"))[0]
            self.reconcile(m)
        return_freed_memory()  # reconciling 10M ids leaves ~0.5 GB of freed heap behind

    def _expected_ids(self, m: str) -> np.ndarray:
        """Ascending ids of the items with a vector of modality m: what its ANN index holds."""
        vector_set = self.vector_sets[m]
        return vector_set.expected_ids(self.db.ids()) if vector_set.on_disk else self.db.blob_ids(m)

    def reconcile(self, modality: str | None = None) -> tuple[int, int]:
        """Make FAISS hold exactly the ids of SQLite (of one modality, or all) -> (added, removed)."""
        added = removed = 0
        with self._lock:
            for m in [self._modality(modality)] if modality else self.modalities:
                ann = self.anns[m]
                missing, extra = id_differences(self._expected_ids(m), ann.ids())
                ann.remove(extra)
                for start in range(0, len(missing), 50_000):
                    chunk = missing[start : start + 50_000]
                    ann.add(self.vector_sets[m].get(chunk), chunk)
                if len(missing) or len(extra):
                    self._dirty.add(m)
                added, removed = added + len(missing), removed + len(extra)
        return added, removed

    def refresh(self) -> bool:
        """A read-only store catches up with the writer's commits (added and deleted items) when
        SQLite's data version moved since it last looked -> whether it looked again. The writer
        and stores that do not search have nothing to catch up with."""
        if self._seen_version is None:
            return False
        with self._lock:
            version = self.db.data_version()
            if version == self._seen_version:
                return False
            self._seen_version = version
            self.reconcile()
            return True

    def rebuild(self, kind: str | None = None, modality: str | None = None) -> None:
        """Build FAISS afresh (kind by size unless given; one modality, or all), then save."""
        with self._lock:
            for m in [self._modality(modality)] if modality else self.modalities:
                ann, recall, trained = self._built(m, kind or self.info.get("kind", "auto"))
                self.anns[m] = ann
                self._dirty.add(m)
                values = {"ann_kind": ann.kind, "nprobe": str(ann.nprobe), "trained_on": str(trained), "calibrated_recall": str(recall)}
                if hasattr(ann, "rerank"):
                    values["rerank"] = str(ann.rerank)
                self.db.set_info({self._key(m, k): v for k, v in values.items()})
            self.flush()
            return_freed_memory()

    def _built(self, m: str, requested: str) -> tuple[AnnIndex, float, int]:
        """A new ANN index over modality m's vectors -> (index, calibrated recall, vectors)."""
        vector_set = self.vector_sets[m]
        if not vector_set.on_disk and requested != "ivfpq":
            ids, vectors = self.db.all_vectors(m)  # every vector in SQLite: one pass
            return (*build(vectors, ids, requested), len(ids))
        ids = self._expected_ids(m)
        kind = choose_kind(len(ids), requested, on_disk=True)
        if kind != "ivfpq":  # the kinds that hold every vector in RAM
            if len(ids) * self.dim * 4 > self.memory_budget:
                raise SearchIndexError(f"a {kind} index of {len(ids):,} vectors needs {len(ids) * self.dim * 4 / 2**30:.1f} GiB "
                                       f"of RAM, over the budget of {self.memory_budget / 2**30:.1f} GiB; use kind auto or ivfpq")  # fmt: skip
            ann, recall = build(vector_set.get(ids), ids, kind)
            return ann, recall, len(ids)
        live = self.db.ids()
        return_freed_memory()  # the transients of _expected_ids, before the index grows
        ann, recall = build_compressed(
            len(ids), self.dim, lambda: vector_set.chunks(live), lambda n: vector_set.sample(ids, n),
            vector_set.get, self.memory_budget,
        )  # fmt: skip
        return ann, recall, len(ids)

    def optimize(self) -> bool:
        """Rebuild when the size calls for another kind, or a trained (IVF, pqfs, ivfpq) index
        has outgrown its training (see choose.RETRAIN_GROWTH). Returns whether it rebuilt."""
        with self._lock:
            rebuilt = False
            for m in self.modalities:
                trained = int(self.info.get(self._key(m, "trained_on"), 0) or 0)
                n = self.anns[m].ntotal
                on_disk = self.vector_sets[m].on_disk
                if needs_rebuild(n, self.info.get("kind", "auto"), self.anns[m].kind, trained, on_disk=on_disk):
                    self.rebuild(modality=m)
                    rebuilt = True
            return rebuilt

    def flush(self) -> None:
        """Persist the FAISS indexes that changed since the last flush (atomic replace)."""
        with self._lock:
            for m in sorted(self._dirty):
                if m in self.anns:
                    self.anns[m].save(self.root / self.ANN_FILES[m])
            self._dirty.clear()

    def _remove_stale_temp_files(self) -> None:
        for name in self.ANN_FILES.values():
            for tmp in self.root.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)

    # ---- writing: SQLite commits first, then FAISS follows ------------------------------
    def add(
        self, records: Sequence[ImageRecord], vectors: np.ndarray, *, near_duplicate: float | None = None
    ) -> AddResult:
        """Insert new images (one transaction), skipping exact duplicates (same SHA-256) and,
        when ``near_duplicate`` is a cosine threshold, images that close to one already kept.
        The vectors are of the default modality (in a combined index: images; the new items
        have no caption vector, so text-modality searches do not return them)."""
        self._require_writable()
        result = AddResult()
        with self._lock:
            keep = select_new(self.db, self.ann, records, vectors, near_duplicate, result)
            if not keep:
                return result
            result.ids += self.db.insert([records[i] for i in keep], vectors[keep], time.time(), self.modality)
            self.ann.add(vectors[keep], np.array(result.ids, dtype=np.int64))
            self._dirty.add(self.modality)
        return result

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Delete items by id -> the ids that existed. Uploaded files and thumbnails go too."""
        self._require_writable()
        with self._lock:
            items = self.items(ids)
            found = [i for i in ids if i in items]
            if not found:
                return []
            self.db.delete(found)
            for m, ann in self.anns.items():
                if ann.remove(np.array(found, dtype=np.int64)):
                    self._dirty.add(m)
        remove_item_files(self.root, [items[i] for i in found])
        return found

    def add_shard(self, rows: Iterable[tuple], shards: dict[str, Shard], tags: Sequence[str] = ()) -> int:
        """Items whose vectors are the rows of one embedding shard per modality (their ids: the
        next ones, as ``shards`` were described with ``next_id``), all in one transaction; FAISS
        follows at the next ``rebuild`` or ``reconcile`` -> the number of items."""
        if self._write_lock is None:
            raise SearchIndexError(f"{self.root} was opened read-only; open it with writable=True to change it")
        with self._lock:
            first = {s.first_id for s in shards.values()}
            if len(first) != 1 or set(shards) != set(self.modalities):
                raise SearchIndexError(f"one shard per modality ({', '.join(self.modalities)}), all from the same id")
            n = self.db.insert_shard_items(first.pop(), rows, list(shards.items()), time.time(), tags)
            for m in self.modalities:
                self.vector_sets[m] = VectorSet(m, self.db, ShardSet(self.db.shards(m)))
            return n

    @property
    def next_id(self) -> int:
        """The id the next item gets."""
        with self._lock:
            return self.db.max_id() + 1

    def store_upload(self, data: bytes, sha256: str, suffix: str) -> Path:
        """Keep an uploaded image inside the index (atomic write; content-addressed)."""
        return store_upload(self.root, data, sha256, suffix)

    def _require_writable(self) -> None:
        if self._write_lock is None or self.ann is None:
            raise SearchIndexError(f"{self.root} was opened read-only; open it with writable=True to change it")

    # ---- reading (see MetadataDB for each) -----------------------------------------------
    def items(self, ids: Sequence[int]) -> dict[int, IndexedItem]:
        with self._lock:
            return self.db.items(ids)

    def vectors(self, ids: Sequence[int], modality: str | None = None) -> np.ndarray:
        """(len(ids), dim) vectors of live items (SearchIndexError naming the ids that are not)."""
        with self._lock:
            m = self._modality(modality)
            ids = np.asarray(ids, dtype=np.int64)
            vector_set = self.vector_sets[m]
            in_shards = ids[vector_set.shards.covers(ids)]
            if len(in_shards):  # a deleted item's row is still in its shard: ask SQLite
                gone = np.setdiff1d(in_shards, self.db.existing(in_shards))
                if len(gone):
                    raise SearchIndexError(f"no items with ids {gone[:10].tolist()}; they may have been deleted")
            return vector_set.get(ids)

    def all_vectors(self, modality: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids (n,), vectors (n, dim)) of every item: for small indexes (all in RAM)."""
        with self._lock:
            m = self._modality(modality)
            if not self.vector_sets[m].on_disk:
                return self.db.all_vectors(m)
            ids = self._expected_ids(m)
            return ids, self.vector_sets[m].get(ids)

    def folders(self, limit: int = 1000) -> list[str]:
        with self._lock:
            return self.db.folders(limit)

    def known_hashes(self) -> frozenset[str]:
        with self._lock:
            return self.db.known_hashes()

    def has_sha256(self, sha256: str) -> bool:
        with self._lock:
            return self.db.has_sha256(sha256)

    def filter_ids(self, flt: SearchFilter) -> np.ndarray:
        with self._lock:
            return self.db.filter_ids(flt)

    def search(self, query: np.ndarray, k: int, flt: SearchFilter | None = None, modality: str | None = None) -> Hits:
        """(dim,) normalised query -> up to k (id, cosine), best first, among the vectors of
        ``modality`` (default: the index's first). Filters are exact: when at least k items
        match, k are returned."""
        with self._lock:
            self.refresh()
            m = self._modality(modality)
            allowed = None if flt is None or flt.is_empty() else self.db.filter_ids(flt)
            if allowed is not None and m != self.modality:  # items added later lack this modality
                allowed = allowed[self.vector_sets[m].has(allowed)]
            return search_one(self.anns[m], query, k, allowed, self.vector_sets[m].get, self.exact_subset)

    def search_many(self, queries: np.ndarray, k: int, modality: str | None = None) -> list[Hits]:
        """(q, dim) normalised queries, no filter -> per query what ``search`` returns, in one
        FAISS call (a batch reads the index once: the service's micro-batcher uses this)."""
        with self._lock:
            self.refresh()
            m = self._modality(modality)
            return search_batch(self.anns[m], queries, k, self.vector_sets[m].get)
