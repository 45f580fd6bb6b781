"""The SQLite half of an index (``meta.sqlite``): items (metadata), vectors (float32 blobs) and
info (model, index parameters). It is the source of truth; the FAISS file is rebuilt from it.

Every write is one transaction (WAL, synchronous=FULL), so a kill at any point leaves either
all or none of it. Ids come from AUTOINCREMENT: a deleted id is never reused, so a stale FAISS
entry can never be mistaken for a new item. Not thread-safe on its own: IndexStore serialises
access with its lock.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import SearchIndexError
from .filters import SearchFilter
from .records import ImageRecord

__all__ = ["FORMAT_VERSION", "IndexedItem", "MetadataDB"]

FORMAT_VERSION = "1"

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
_IDS = "SELECT value FROM json_each(?)"  # ids passed as one JSON array: no limit on their number


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


class MetadataDB:
    """One connection to ``meta.sqlite``; ``info`` mirrors the info table."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path, self.conn = path, conn
        self.info: dict[str, str] = dict(conn.execute("SELECT key, value FROM info").fetchall())
        if self.info.get("format_version") != FORMAT_VERSION:
            raise SearchIndexError(f"{path.parent} has index format {self.info.get('format_version')!r}; this clipforge reads {FORMAT_VERSION}")

    @classmethod
    def create(cls, path: Path, info: dict[str, str]) -> "MetadataDB":
        """A new database with the schema, this format version and these info values."""
        conn = _connect(path)
        _configure(conn, readonly=False)
        with _transaction(conn):
            for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT midway
                if statement.strip():
                    conn.execute(statement)
            conn.executemany("INSERT INTO info VALUES (?, ?)", {"format_version": FORMAT_VERSION, **info}.items())
        return cls(path, conn)

    @classmethod
    def open(cls, path: Path, readonly: bool) -> "MetadataDB":
        """An existing database; SearchIndexError when it is not one, or of another format."""
        conn = _connect(path)
        try:
            _configure(conn, readonly)
            return cls(path, conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise SearchIndexError(f"{path} is not a readable index database ({e})") from None
        except SearchIndexError:
            conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    @property
    def dim(self) -> int:
        return int(self.info["embed_dim"])

    def set_info(self, values: dict[str, str]) -> None:
        with _transaction(self.conn):
            self.conn.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)", values.items())
        self.info.update(values)

    # ---- writing -------------------------------------------------------------------------
    def insert(self, records: Sequence[ImageRecord], vectors: np.ndarray, now: float) -> list[int]:
        """Items and their (n, dim) vectors in one transaction -> their new ids."""
        with _transaction(self.conn):
            return [self._insert(rec, vector, now) for rec, vector in zip(records, vectors)]

    def _insert(self, rec: ImageRecord, vector: np.ndarray, now: float) -> int:
        cur = self.conn.execute(
            "INSERT INTO items (path, folder, caption, sha256, size, width, height, added, tags) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.path, rec.folder, rec.caption, rec.sha256, rec.size, rec.width, rec.height, now, json.dumps(list(rec.tags))),
        )
        item_id = int(cur.lastrowid)
        self.conn.execute("INSERT INTO vectors VALUES (?, ?)", (item_id, np.asarray(vector, dtype="<f4").tobytes()))
        return item_id

    def delete(self, ids: Sequence[int]) -> None:
        """Items and their vectors, in one transaction."""
        with _transaction(self.conn):
            for start in range(0, len(ids), 10_000):
                arg = _json_ids(ids[start : start + 10_000])
                self.conn.execute(f"DELETE FROM items WHERE id IN ({_IDS})", (arg,))
                self.conn.execute(f"DELETE FROM vectors WHERE id IN ({_IDS})", (arg,))

    # ---- reading -------------------------------------------------------------------------
    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM items").fetchone()[0])

    def summary_counts(self) -> tuple[int, float | None, float | None]:
        """-> (distinct folders, first added, last added)."""
        folders = self.conn.execute("SELECT count(DISTINCT folder) FROM items").fetchone()[0]
        first, last = self.conn.execute("SELECT min(added), max(added) FROM items").fetchone()
        return folders, first, last

    def items(self, ids: Sequence[int]) -> dict[int, IndexedItem]:
        """id -> IndexedItem for the ids that exist."""
        if len(ids) == 0:
            return {}
        rows = self.conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id IN ({_IDS})", (_json_ids(ids),)).fetchall()
        return {r[0]: IndexedItem(*r[:9], tuple(json.loads(r[9]))) for r in rows}

    def ids(self) -> np.ndarray:
        """(n,) every item's id."""
        return np.fromiter((r[0] for r in self.conn.execute("SELECT id FROM items")), dtype=np.int64)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), dim) stored vectors in the order of ``ids`` (all must exist)."""
        rows = dict(self.conn.execute(f"SELECT id, vector FROM vectors WHERE id IN ({_IDS})", (_json_ids(ids),)).fetchall())
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise SearchIndexError(f"no items with ids {missing[:10]}; they may have been deleted")
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([np.frombuffer(rows[int(i)], dtype="<f4") for i in ids])

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids (n,), vectors (n, dim)) of every item, read in one pass."""
        n = self.count()
        ids = np.empty(n, dtype=np.int64)
        vectors = np.empty((n, self.dim), dtype=np.float32)
        for row, (item_id, blob) in enumerate(self.conn.execute("SELECT id, vector FROM vectors ORDER BY id")):
            ids[row] = item_id
            vectors[row] = np.frombuffer(blob, dtype="<f4")
        return ids, vectors

    def folders(self, limit: int = 1000) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT folder FROM items ORDER BY folder LIMIT ?", (limit,))]

    def known_hashes(self) -> frozenset[str]:
        return frozenset(r[0] for r in self.conn.execute("SELECT sha256 FROM items"))

    def id_of_sha256(self, sha256: str) -> int | None:
        """The id of the item with these bytes, if any."""
        row = self.conn.execute("SELECT id FROM items WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else int(row[0])

    def has_sha256(self, sha256: str) -> bool:
        return self.id_of_sha256(sha256) is not None

    def filter_ids(self, flt: SearchFilter) -> np.ndarray:
        """(n,) ids of the items the filter keeps."""
        clause, params = flt.sql()
        return np.fromiter((r[0] for r in self.conn.execute(f"SELECT id FROM items {clause}", params)), dtype=np.int64)


def _connect(path: Path) -> sqlite3.Connection:
    # autocommit (isolation_level None): _transaction says where each transaction begins;
    # any thread: IndexStore's lock serialises the use of the connection
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)


def _configure(conn: sqlite3.Connection, readonly: bool) -> None:
    if readonly:
        # query_only rather than a read-only open: after a crash, the first reader may have to
        # recover the WAL, which a mode=ro connection cannot do.
        conn.execute("PRAGMA query_only=1")
    else:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a COMMIT survives power loss, not only a kill


def _json_ids(ids: Sequence[int]) -> str:
    return json.dumps([int(i) for i in ids])


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
