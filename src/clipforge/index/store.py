"""A search index on disk: SQLite (metadata and vectors, the source of truth) + FAISS (a cache).

Layout of an index folder::

    meta.sqlite      items (metadata), vectors (float32 blobs), info (model, index parameters)
    vectors.faiss    IndexIDMap2 over the same ids; rebuilt from SQLite when missing or stale
    files/           images uploaded through the service (content-addressed by SHA-256)
    thumbs/          thumbnail cache
    .lock            locked (lockf) by the one process that may write

Commit order, and why it is safe to be killed at any point:

1. ``add``: one SQLite transaction inserts the items and their vectors (WAL, synchronous=FULL);
   only after COMMIT are the vectors added to the in-memory FAISS index.
2. ``delete``: one SQLite transaction deletes the rows; then the ids leave FAISS.
3. ``flush``: the FAISS file is written to a temp file, fsynced and renamed over the old one.

So SQLite always holds everything committed, and the FAISS file lags behind it by some adds and
deletes. ``open`` reconciles by id: ids in SQLite but not FAISS are added from the vectors
table, ids in FAISS but not SQLite are removed. Ids come from AUTOINCREMENT, so a deleted id is
never reused and a stale FAISS entry can never be mistaken for a new item.

This module keeps that order; the parts are elsewhere: metadata.py (SQLite), lock.py (the
write lock), choose.py and ann.py (FAISS), ann_search.py (exact filters), duplicates.py,
uploads.py (files the index owns).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import SearchIndexError
from .ann import AnnIndex
from .ann_search import Hits, search_batch, search_one
from .choose import build, choose_kind, load_index, needs_rebuild, new_index
from .duplicates import AddResult, select_new
from .records import ImageRecord
from .filters import SearchFilter
from .lock import WriteLock
from .metadata import IndexedItem, MetadataDB
from .uploads import FILES, remove_item_files, store_upload

__all__ = ["IndexedItem", "AddResult", "IndexStore"]

# A filtered subset this small is scored exactly from its stored vectors: cheaper than an
# IVF or pqfs search with a selector, and exact by construction.
EXACT_SUBSET = 20_000


class IndexStore:
    """Open with ``IndexStore.create(...)`` or ``IndexStore.open(path)``; close when done.

    All methods are thread-safe (one lock: SQLite work per query is tiny, and FAISS must not be
    searched while it is being modified).
    """

    SQLITE, FAISS, LOCK = "meta.sqlite", "vectors.faiss", ".lock"

    def __init__(self, root: Path, db: MetadataDB, write_lock: WriteLock | None) -> None:
        self.root, self.db, self._write_lock = root, db, write_lock
        self.conn, self.info = db.conn, db.info  # the same objects: tests and tools query them
        self._lock = threading.RLock()
        self.ann: AnnIndex | None = None
        self._dirty = False
        self.exact_subset = EXACT_SUBSET

    # ---- opening and closing -------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, *, model_ref: str, model_config: dict, kind: str = "auto") -> "IndexStore":
        """A new, empty index folder (refuses to overwrite an existing index)."""
        root = Path(root)
        if (root / cls.SQLITE).exists():
            raise SearchIndexError(f"{root} already holds an index; use `clipforge index add` or choose another --out")
        choose_kind(0, kind)  # validates the name
        root.mkdir(parents=True, exist_ok=True)
        write_lock = WriteLock.take(root / cls.LOCK)
        info = {
            "model": model_ref, "model_config": json.dumps(model_config),
            "embed_dim": str(model_config["embed_dim"]), "kind": kind, "created": str(time.time()),
        }  # fmt: skip
        store = cls(root, MetadataDB.create(root / cls.SQLITE, info), write_lock)
        store.ann = new_index("flat", store.dim)
        store._dirty = True
        store.flush()
        return store

    @classmethod
    def open(cls, root: str | Path, *, writable: bool = True, searchable: bool = False) -> "IndexStore":
        """Open an index; ``writable`` takes the write lock and loads + reconciles FAISS.

        ``searchable`` loads FAISS into a read-only store too, reconciled with SQLite in memory
        only (or built in memory if the file is missing or damaged), so any number of read-only
        processes can search an index while one process writes it."""
        root = Path(root)
        if not (root / cls.SQLITE).is_file():
            raise SearchIndexError(f"no index at {root}; build one with `clipforge index build SOURCE --model M --out {root}`")
        write_lock = WriteLock.take(root / cls.LOCK) if writable else None
        try:
            store = cls(root, MetadataDB.open(root / cls.SQLITE, readonly=not writable), write_lock)
        except SearchIndexError:
            if write_lock is not None:
                write_lock.release()
            raise
        if writable:
            store._remove_stale_temp_files()
        if writable or searchable:
            store._load_ann(persist=writable)
        return store

    def close(self) -> None:
        with self._lock:
            if self._write_lock is not None:
                self.flush()
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
            "added_first": first, "added_last": last,
        }  # fmt: skip
        if self.ann is not None:
            out.update(kind=self.ann.kind, faiss_vectors=self.ann.ntotal, nlist=self.ann.nlist, nprobe=self.ann.nprobe)
        else:
            out.update(kind=self.info.get("ann_kind", "flat"), nprobe=int(self.info.get("nprobe", 1)))
        if "calibrated_recall" in self.info:
            out["calibrated_recall_at_10"] = float(self.info["calibrated_recall"])
        return out

    # ---- FAISS cache: load, reconcile, rebuild, flush -----------------------------------
    def _read_ann(self) -> AnnIndex | None:
        """The saved FAISS index, or None when it is missing, truncated or foreign."""
        try:
            ann = load_index(self.root / self.FAISS, nprobe=int(self.info.get("nprobe", 1)))
        except (RuntimeError, SearchIndexError, OSError):
            return None
        return ann if ann.dim == self.dim else None

    def _load_ann(self, persist: bool) -> None:
        """The saved FAISS index made to match SQLite, or built afresh when it is missing or
        damaged; saved only when ``persist`` (a read-only store writes nothing)."""
        ann = self._read_ann()
        if ann is None and persist:
            self.rebuild()  # and save
            return
        if ann is None:
            ids, vectors = self.all_vectors()
            ann, _ = build(vectors, ids, self.info.get("kind", "auto"))
        self.ann = ann
        self.reconcile()

    def reconcile(self) -> tuple[int, int]:
        """Make FAISS hold exactly the ids of SQLite -> (added, removed)."""
        with self._lock:
            sql_ids, faiss_ids = self.db.ids(), self.ann.ids()
            missing = np.setdiff1d(sql_ids, faiss_ids)
            extra = np.setdiff1d(faiss_ids, sql_ids)
            self.ann.remove(extra)
            for start in range(0, len(missing), 50_000):
                chunk = missing[start : start + 50_000]
                self.ann.add(self.vectors(chunk), chunk)
            self._dirty |= bool(len(missing) or len(extra))
            return len(missing), len(extra)

    def rebuild(self, kind: str | None = None) -> None:
        """Build FAISS afresh from the vectors in SQLite (kind by size unless given), then save."""
        with self._lock:
            ids, vectors = self.all_vectors()
            ann, recall = build(vectors, ids, kind or self.info.get("kind", "auto"))
            self.ann, self._dirty = ann, True
            values = dict(ann_kind=ann.kind, nprobe=str(ann.nprobe), trained_on=str(len(ids)), calibrated_recall=str(recall))
            self.db.set_info(values)
            self.flush()

    def optimize(self) -> bool:
        """Rebuild when the size calls for another kind, or a trained (IVF, pqfs) index has
        outgrown its training (see choose.RETRAIN_GROWTH). Returns whether it rebuilt."""
        with self._lock:
            trained = int(self.info.get("trained_on", 0) or 0)
            if not needs_rebuild(self.count(), self.info.get("kind", "auto"), self.ann.kind, trained):
                return False
            self.rebuild()
            return True

    def flush(self) -> None:
        """Persist the FAISS index if it changed since the last flush (atomic replace)."""
        with self._lock:
            if self._dirty and self.ann is not None:
                self.ann.save(self.root / self.FAISS)
                self._dirty = False

    def _remove_stale_temp_files(self) -> None:
        for tmp in self.root.glob(f".{self.FAISS}.*.tmp"):
            tmp.unlink(missing_ok=True)

    # ---- writing: SQLite commits first, then FAISS follows ------------------------------
    def add(
        self, records: Sequence[ImageRecord], vectors: np.ndarray, *, near_duplicate: float | None = None
    ) -> AddResult:
        """Insert new images (one transaction), skipping exact duplicates (same SHA-256) and,
        when ``near_duplicate`` is a cosine threshold, images that close to one already kept."""
        self._require_writable()
        result = AddResult()
        with self._lock:
            keep = select_new(self.db, self.ann, records, vectors, near_duplicate, result)
            if not keep:
                return result
            result.ids += self.db.insert([records[i] for i in keep], vectors[keep], time.time())
            self.ann.add(vectors[keep], np.array(result.ids, dtype=np.int64))
            self._dirty = True
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
            self.ann.remove(np.array(found, dtype=np.int64))
            self._dirty = True
        remove_item_files(self.root, [items[i] for i in found])
        return found

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

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        with self._lock:
            return self.db.vectors(ids)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self.db.all_vectors()

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

    def search(self, query: np.ndarray, k: int, flt: SearchFilter | None = None) -> Hits:
        """(dim,) normalised query -> up to k (id, cosine), best first. Filters are exact: when at
        least k items match, k are returned."""
        with self._lock:
            allowed = None if flt is None or flt.is_empty() else self.db.filter_ids(flt)
            return search_one(self.ann, query, k, allowed, self.db.vectors, self.exact_subset)

    def search_many(self, queries: np.ndarray, k: int) -> list[Hits]:
        """(q, dim) normalised queries, no filter -> per query what ``search`` returns, in one
        FAISS call (a batch reads the index once: the service's micro-batcher uses this)."""
        with self._lock:
            return search_batch(self.ann, queries, k, self.db.vectors)
