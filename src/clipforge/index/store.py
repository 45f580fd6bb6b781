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
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import SearchIndexError
from .ann import AnnIndex, build, choose_kind
from .embed import ImageRecord
from .filters import SearchFilter

__all__ = ["FORMAT_VERSION", "IndexedItem", "AddResult", "IndexStore"]

FORMAT_VERSION = "1"
# A filtered subset this small is scored exactly from its stored vectors: cheaper than an
# IVF or pqfs search with a selector, and exact by construction.
EXACT_SUBSET = 20_000
# Rebuild (retrain) an IVF index when the collection has grown this much since training.
RETRAIN_GROWTH = 4.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    folder TEXT NOT NULL DEFAULT '',
    caption TEXT,
    sha256 TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    added REAL NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS items_folder ON items(folder);
CREATE INDEX IF NOT EXISTS items_added ON items(added);
CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL);
"""
_ITEM_COLUMNS = "id, path, folder, caption, sha256, size, width, height, added, tags"


@dataclass(frozen=True)
class IndexedItem:
    id: int
    path: str
    folder: str
    caption: str | None
    sha256: str
    size: int
    width: int
    height: int
    added: float
    tags: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "tags": list(self.tags)}


@dataclass
class AddResult:
    ids: list[int] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)  # path -> id of the same bytes
    near_duplicates: dict[str, tuple[int, float]] = field(default_factory=dict)  # path -> (id, cosine)

    def merge(self, other: "AddResult") -> None:
        self.ids += other.ids
        self.duplicates.update(other.duplicates)
        self.near_duplicates.update(other.near_duplicates)


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    if readonly:
        # query_only rather than a read-only open: after a crash, the first reader may have to
        # recover the WAL, which a mode=ro connection cannot do.
        conn.execute("PRAGMA query_only=1")
    else:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a COMMIT survives power loss, not only a kill
    return conn


class IndexStore:
    """Open with ``IndexStore.create(...)`` or ``IndexStore.open(path)``; close when done.

    All methods are thread-safe (one lock: SQLite work per query is tiny, and FAISS must not be
    searched while it is being modified).
    """

    SQLITE, FAISS, LOCK = "meta.sqlite", "vectors.faiss", ".lock"

    def __init__(self, root: Path, conn: sqlite3.Connection, lock_fd: int | None) -> None:
        self.root, self.conn, self._lock_fd = root, conn, lock_fd
        self._lock = threading.RLock()
        self.ann: AnnIndex | None = None
        self._dirty = False
        self.exact_subset = EXACT_SUBSET
        self.info = dict(conn.execute("SELECT key, value FROM info").fetchall())
        if self.info.get("format_version") != FORMAT_VERSION:
            raise SearchIndexError(f"{root} has index format {self.info.get('format_version')!r}; this clipforge reads {FORMAT_VERSION}")

    # ---- opening and closing -------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, *, model_ref: str, model_config: dict, kind: str = "auto") -> "IndexStore":
        """A new, empty index folder (refuses to overwrite an existing index)."""
        root = Path(root)
        if (root / cls.SQLITE).exists():
            raise SearchIndexError(f"{root} already holds an index; use `clipforge index add` or choose another --out")
        choose_kind(0, kind)  # validates the name
        root.mkdir(parents=True, exist_ok=True)
        lock_fd = _take_lock(root / cls.LOCK)
        conn = _connect(root / cls.SQLITE, readonly=False)
        info = {
            "format_version": FORMAT_VERSION, "model": model_ref, "model_config": json.dumps(model_config),
            "embed_dim": str(model_config["embed_dim"]), "kind": kind, "created": str(time.time()),
        }  # fmt: skip
        with _transaction(conn):
            for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT midway
                if statement.strip():
                    conn.execute(statement)
            conn.executemany("INSERT INTO info VALUES (?, ?)", info.items())
        store = cls(root, conn, lock_fd)
        store.ann = AnnIndex.empty(store.dim, "flat")
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
        lock_fd = _take_lock(root / cls.LOCK) if writable else None
        try:
            store = cls(root, _connect(root / cls.SQLITE, readonly=not writable), lock_fd)
        except sqlite3.DatabaseError as e:
            _release_lock(lock_fd)
            raise SearchIndexError(f"{root / cls.SQLITE} is not a readable index database ({e})") from None
        if writable:
            store._remove_stale_temp_files()
            store._load_ann()
        elif searchable:
            store._load_ann_in_memory()
        return store

    def close(self) -> None:
        with self._lock:
            if self._lock_fd is not None:
                self.flush()
            self.conn.close()
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ---- properties ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.info["embed_dim"])

    @property
    def model_ref(self) -> str:
        return self.info["model"]

    @property
    def model_config(self) -> dict:
        return json.loads(self.info["model_config"])

    @property
    def files_dir(self) -> Path:
        return self.root / "files"

    def count(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT count(*) FROM items").fetchone()[0])

    def summary(self) -> dict[str, Any]:
        """What `clipforge index info` prints."""
        with self._lock:
            folders = self.conn.execute("SELECT count(DISTINCT folder) FROM items").fetchone()[0]
            span = self.conn.execute("SELECT min(added), max(added) FROM items").fetchone()
        out = {
            "path": str(self.root), "items": self.count(), "folders": folders, "model": self.model_ref,
            "embed_dim": self.dim, "kind_requested": self.info.get("kind", "auto"),
            "added_first": span[0], "added_last": span[1],
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
            ann = AnnIndex.load(self.root / self.FAISS, nprobe=int(self.info.get("nprobe", 1)))
        except (RuntimeError, SearchIndexError, OSError):
            return None
        return ann if ann.dim == self.dim else None

    def _load_ann(self) -> None:
        ann = self._read_ann()
        if ann is None:
            self.rebuild()  # and save
            return
        self.ann = ann
        self.reconcile()

    def _load_ann_in_memory(self) -> None:
        """Read-only: the saved FAISS index made to match SQLite without writing anything."""
        ann = self._read_ann()
        if ann is None:
            ids, vectors = self.all_vectors()
            ann, _ = build(vectors, ids, self.info.get("kind", "auto"))
        self.ann = ann
        self.reconcile()

    def reconcile(self) -> tuple[int, int]:
        """Make FAISS hold exactly the ids of SQLite -> (added, removed)."""
        with self._lock:
            sql_ids = np.fromiter((r[0] for r in self.conn.execute("SELECT id FROM items")), dtype=np.int64)
            faiss_ids = self.ann.ids()
            missing = np.setdiff1d(sql_ids, faiss_ids)
            extra = np.setdiff1d(faiss_ids, sql_ids)
            self.ann.remove(extra)
            for chunk in _chunks(missing, 50_000):
                self.ann.add(self.vectors(chunk), chunk)
            self._dirty |= bool(len(missing) or len(extra))
            return len(missing), len(extra)

    def rebuild(self, kind: str | None = None) -> None:
        """Build FAISS afresh from the vectors in SQLite (kind by size unless given), then save."""
        with self._lock:
            ids, vectors = self.all_vectors()
            ann, recall = build(vectors, ids, kind or self.info.get("kind", "auto"))
            self.ann, self._dirty = ann, True
            self._set_info(ann_kind=ann.kind, nprobe=str(ann.nprobe), trained_on=str(len(ids)), calibrated_recall=str(recall))
            self.flush()

    def optimize(self) -> bool:
        """Rebuild when the size calls for another kind, or a trained (IVF, pqfs) index has
        outgrown its training (see RETRAIN_GROWTH). Returns whether it rebuilt."""
        with self._lock:
            n = self.count()
            want = choose_kind(n, self.info.get("kind", "auto"))
            trained = int(self.info.get("trained_on", 0) or 0)
            same = want == self.ann.kind or (want, self.ann.kind) == ("ivf", "pqfs")  # build's own choice
            if not same or (want != "flat" and n > RETRAIN_GROWTH * max(trained, 1)):
                self.rebuild()
                return True
            return False

    def flush(self) -> None:
        """Persist the FAISS index if it changed since the last flush (atomic replace)."""
        with self._lock:
            if self._dirty and self.ann is not None:
                self.ann.save(self.root / self.FAISS)
                self._dirty = False

    def _set_info(self, **values: str) -> None:
        with _transaction(self.conn):
            self.conn.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)", values.items())
        self.info.update(values)

    def _remove_stale_temp_files(self) -> None:
        for tmp in self.root.glob(f".{self.FAISS}.*.tmp"):
            tmp.unlink(missing_ok=True)

    # ---- writing -------------------------------------------------------------------------
    def add(
        self, records: Sequence[ImageRecord], vectors: np.ndarray, *, near_duplicate: float | None = None
    ) -> AddResult:
        """Insert new images (one transaction), skipping exact duplicates (same SHA-256) and,
        when ``near_duplicate`` is a cosine threshold, images that close to one already kept."""
        self._require_writable()
        result = AddResult()
        with self._lock:
            keep = self._select_new(records, vectors, near_duplicate, result)
            if not keep:
                return result
            now = time.time()
            with _transaction(self.conn):
                for i in keep:
                    result.ids.append(self._insert(records[i], vectors[i], now))
            self.ann.add(vectors[keep], np.array(result.ids, dtype=np.int64))
            self._dirty = True
        return result

    def _select_new(
        self, records: Sequence[ImageRecord], vectors: np.ndarray, threshold: float | None, result: AddResult
    ) -> list[int]:
        keep: list[int] = []
        for i, rec in enumerate(records):
            row = self.conn.execute("SELECT id FROM items WHERE sha256 = ?", (rec.sha256,)).fetchone()
            if row is not None:
                result.duplicates[rec.path] = int(row[0])
                continue
            if threshold is not None:
                near = self._nearest(vectors[i], vectors[keep])
                if near is not None and near[1] >= threshold:
                    result.near_duplicates[rec.path] = near
                    continue
            keep.append(i)
        return keep

    def _nearest(self, vector: np.ndarray, pending: np.ndarray) -> tuple[int, float] | None:
        """Nearest stored item -> (id, cosine); an image pending in this batch gives id -1."""
        best: tuple[int, float] | None = None
        if self.ann.ntotal:
            scores, ids = self.ann.search(vector[None], 1)
            if ids[0, 0] >= 0:
                best = (int(ids[0, 0]), float(scores[0, 0]))
        if len(pending):
            sim = float((pending @ vector).max())
            if best is None or sim > best[1]:
                best = (-1, sim)
        return best

    def _insert(self, rec: ImageRecord, vector: np.ndarray, now: float) -> int:
        cur = self.conn.execute(
            "INSERT INTO items (path, folder, caption, sha256, size, width, height, added, tags) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.path, rec.folder, rec.caption, rec.sha256, rec.size, rec.width, rec.height, now, json.dumps(list(rec.tags))),
        )
        item_id = int(cur.lastrowid)
        self.conn.execute("INSERT INTO vectors VALUES (?, ?)", (item_id, np.asarray(vector, dtype="<f4").tobytes()))
        return item_id

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Delete items by id -> the ids that existed. Uploaded files and thumbnails go too."""
        self._require_writable()
        with self._lock:
            items = self.items(ids)
            found = [i for i in ids if i in items]
            if not found:
                return []
            with _transaction(self.conn):
                for chunk in _chunks(np.array(found), 10_000):
                    arg = json.dumps([int(i) for i in chunk])
                    self.conn.execute("DELETE FROM items WHERE id IN (SELECT value FROM json_each(?))", (arg,))
                    self.conn.execute("DELETE FROM vectors WHERE id IN (SELECT value FROM json_each(?))", (arg,))
            self.ann.remove(np.array(found, dtype=np.int64))
            self._dirty = True
        self._remove_owned_files([items[i] for i in found])
        return found

    def _remove_owned_files(self, items: list[IndexedItem]) -> None:
        for item in items:
            path = Path(item.path)
            if path.parent.parent == self.files_dir:  # only files the index itself stored
                path.unlink(missing_ok=True)
            for thumb in (self.root / "thumbs").glob(f"{item.id}_*.jpg"):
                thumb.unlink(missing_ok=True)

    def store_upload(self, data: bytes, sha256: str, suffix: str) -> Path:
        """Keep an uploaded image inside the index (atomic write; content-addressed)."""
        path = self.files_dir / sha256[:2] / f"{sha256}{suffix}"
        if not path.exists():
            _atomic_write(path, data)
        return path

    def _require_writable(self) -> None:
        if self._lock_fd is None or self.ann is None:
            raise SearchIndexError(f"{self.root} was opened read-only; open it with writable=True to change it")

    # ---- reading -------------------------------------------------------------------------
    def items(self, ids: Sequence[int]) -> dict[int, IndexedItem]:
        """id -> IndexedItem for the ids that exist."""
        if len(ids) == 0:
            return {}
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([int(i) for i in ids]),),
            ).fetchall()
        return {r[0]: IndexedItem(*r[:9], tuple(json.loads(r[9]))) for r in rows}

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), dim) stored vectors in the order of ``ids`` (all must exist)."""
        with self._lock:
            rows = dict(
                self.conn.execute(
                    "SELECT id, vector FROM vectors WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps([int(i) for i in ids]),),
                ).fetchall()
            )
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise SearchIndexError(f"no items with ids {missing[:10]}; they may have been deleted")
        return np.stack([np.frombuffer(rows[int(i)], dtype="<f4") for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids (n,), vectors (n, dim)) of every item, read in one pass."""
        with self._lock:
            n = self.count()
            ids = np.empty(n, dtype=np.int64)
            vectors = np.empty((n, self.dim), dtype=np.float32)
            for row, (item_id, blob) in enumerate(self.conn.execute("SELECT id, vector FROM vectors ORDER BY id")):
                ids[row] = item_id
                vectors[row] = np.frombuffer(blob, dtype="<f4")
            return ids, vectors

    def folders(self, limit: int = 1000) -> list[str]:
        with self._lock:
            return [r[0] for r in self.conn.execute("SELECT DISTINCT folder FROM items ORDER BY folder LIMIT ?", (limit,))]

    def known_hashes(self) -> frozenset[str]:
        with self._lock:
            return frozenset(r[0] for r in self.conn.execute("SELECT sha256 FROM items"))

    def has_sha256(self, sha256: str) -> bool:
        with self._lock:
            return self.conn.execute("SELECT 1 FROM items WHERE sha256 = ?", (sha256,)).fetchone() is not None

    def filter_ids(self, flt: SearchFilter) -> np.ndarray:
        clause, params = flt.sql()
        with self._lock:
            return np.fromiter((r[0] for r in self.conn.execute(f"SELECT id FROM items {clause}", params)), dtype=np.int64)

    def search(self, query: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[tuple[int, float]]:
        """(dim,) normalised query -> up to k (id, cosine), best first. Filters are exact: when at
        least k items match, k are returned."""
        with self._lock:
            allowed = None if flt is None or flt.is_empty() else self.filter_ids(flt)
            available = self.ann.ntotal if allowed is None else len(allowed)
            want = min(k, available)
            if want == 0:
                return []
            if self.ann.kind != "flat" and allowed is not None and len(allowed) <= self.exact_subset:
                return self._exact(query, want, allowed)
            return self._ann_search(query, want, allowed)

    def search_many(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """(q, dim) normalised queries, no filter -> per query what ``search`` returns, in one
        FAISS call (a batch reads the index once: the service's micro-batcher uses this)."""
        with self._lock:
            want = min(k, self.ann.ntotal)
            if want == 0:
                return [[] for _ in queries]
            scores, ids = self.ann.search(queries, want)  # (q, want) each
            out = []
            for query, row_ids, row_scores in zip(queries, ids, scores):
                hits = _hits(row_ids, row_scores)
                out.append(hits if len(hits) >= want else self._ann_search(query, want, None))  # rare: IVF widens
            return out

    def _ann_search(self, query: np.ndarray, k: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        nprobe = self.ann.nprobe
        while True:
            scores, ids = self.ann.search(query[None], k, allowed, nprobe=nprobe)
            hits = _hits(ids[0], scores[0])
            if len(hits) >= k or self.ann.kind == "flat" or nprobe >= self.ann.nlist:
                break
            nprobe *= 4  # the probed lists held fewer than k allowed items: look wider
        if len(hits) < k:  # cannot happen for flat; for IVF a last, exact resort
            ids_all = allowed if allowed is not None else self.ann.ids()
            return self._exact(query, k, ids_all)
        return hits

    def _exact(self, query: np.ndarray, k: int, ids: np.ndarray) -> list[tuple[int, float]]:
        vectors = self.vectors(ids)  # (n, dim)
        scores = vectors @ query  # (n,)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(ids[i]), float(scores[i])) for i in top]


def _hits(ids: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
    """One FAISS result row -> (id, score) pairs; id -1 marks 'no more results'."""
    return [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0]


# POSIX record locks (lockf), not flock: a forked child (a DataLoader worker) does not inherit
# them, so a killed writer's lock dies with it even while its orphaned workers wind down. They
# do not exclude the same process, hence the set of paths this process holds.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


def _take_lock(path: Path) -> int:
    import fcntl

    key = str(path.resolve())
    with _HELD_LOCK:
        if key in _HELD:
            raise SearchIndexError(f"{path.parent} is already open for writing in this process; close it first")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SearchIndexError(
                f"{path.parent} is open for writing by another process (a running `clipforge serve` or "
                "`index add`); stop it, or add images through the service's API"
            ) from None
        _HELD.add(key)
        _FD_KEYS[fd] = key
    return fd


_FD_KEYS: dict[int, str] = {}


def _release_lock(fd: int | None) -> None:
    if fd is None:
        return
    with _HELD_LOCK:
        _HELD.discard(_FD_KEYS.pop(fd, ""))
        os.close(fd)  # closing the descriptor releases the lock


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _chunks(values: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

