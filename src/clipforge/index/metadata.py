"""The SQLite half of an index (``meta.sqlite``): items (metadata), vectors (float32 blobs),
shards (embedding files that hold the vectors of an index built from embeddings: shards.py) and
info (model, index parameters). With the shards it is the source of truth; the FAISS files are
rebuilt from them.

An item's vector is a blob (``vectors``; ``text_vectors`` for caption embeddings) or a row of a
shard: built from embeddings, the millions of bulk rows stay in their ``.npy`` files and SQLite
holds their metadata only; items added later get blobs.

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
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import SearchIndexError
from .filters import SearchFilter
from .records import ImageRecord
from .shards import Shard

__all__ = ["FORMAT_VERSION", "MODALITIES", "IndexedItem", "MetadataDB"]

# 2: items.url, sha256 may be NULL (embeddings from clip-retrieval carry no hash), text_vectors,
# shards. Version 1 files are read as they are and upgraded when opened for writing.
FORMAT_VERSION = "2"
_READABLE = ("1", FORMAT_VERSION)
MODALITIES = ("image", "text")  # what a vector embeds: the image, or the caption (text tower)
_BLOBS = {"image": "vectors", "text": "text_vectors"}  # modality -> its table of vector blobs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    folder TEXT NOT NULL DEFAULT '',
    caption TEXT,
    sha256 TEXT UNIQUE,
    size INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    added REAL NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    url TEXT
);
CREATE INDEX IF NOT EXISTS items_folder ON items(folder);
CREATE INDEX IF NOT EXISTS items_added ON items(added);
CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS text_vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    modality TEXT NOT NULL,
    path TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (modality, first_id)
);
"""
# What a version 1 file lacks (its items.sha256 stays NOT NULL: it always had hashes).
_UPGRADE_1 = ["ALTER TABLE items ADD COLUMN url TEXT"] + [s for s in _SCHEMA.split(";") if "text_vectors" in s or "shards (" in s]
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
    url: str | None = None  # where the image came from (clip-retrieval's metadata), if known

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "tags": list(self.tags)}


class MetadataDB:
    """One connection to ``meta.sqlite``; ``info`` mirrors the info table."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path, self.conn = path, conn
        self.info: dict[str, str] = dict(conn.execute("SELECT key, value FROM info").fetchall())
        if self.info.get("format_version") not in _READABLE:
            raise SearchIndexError(f"{path.parent} has index format {self.info.get('format_version')!r}; this clipforge reads {', '.join(_READABLE)}")
        self._tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
        self._columns = "id, path, folder, caption, sha256, size, width, height, added, tags, " + ("url" if "url" in columns else "NULL")

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
            if not readonly:
                _upgrade(conn)
            return cls(path, conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise SearchIndexError(f"{path} is not a readable index database ({e})") from None
        except SearchIndexError:
            conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits (a few
        microseconds; how a read-only store notices the writer's commits)."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    @property
    def dim(self) -> int:
        return int(self.info["embed_dim"])

    def set_info(self, values: dict[str, str]) -> None:
        with _transaction(self.conn):
            self.conn.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)", values.items())
        self.info.update(values)

    # ---- writing -------------------------------------------------------------------------
    def insert(self, records: Sequence[ImageRecord], vectors: np.ndarray, now: float, modality: str = "image") -> list[int]:
        """Items and their (n, dim) vectors (of this modality) in one transaction -> their new ids."""
        table = self._blob_table(modality)
        with _transaction(self.conn):
            ids = [self._insert_item(rec, now) for rec in records]
            rows = ((i, np.asarray(v, dtype="<f4").tobytes()) for i, v in zip(ids, vectors))
            self.conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)
            return ids

    def _insert_item(self, rec: ImageRecord, now: float) -> int:
        cur = self.conn.execute(
            "INSERT INTO items (path, folder, caption, sha256, size, width, height, added, tags, url) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.path, rec.folder, rec.caption, rec.sha256 or None, rec.size, rec.width, rec.height, now,
             json.dumps(list(rec.tags)), rec.url),
        )  # fmt: skip
        return int(cur.lastrowid)

    def insert_shard_items(
        self, first_id: int, rows: Iterable[tuple], shards: Sequence[tuple[str, Shard]], now: float, tags: Sequence[str] = ()
    ) -> int:
        """Items first_id, first_id + 1, ... (rows of path, folder, caption, sha256, size, width,
        height, url) whose vectors are the rows of these (modality, shard)s, with the shards, in
        one transaction: a shard is in the index with all its items or not at all -> rows added."""
        if first_id <= self.max_id():
            raise SearchIndexError(f"ids from {first_id} are already taken in {self.path.parent}")
        tags_json = json.dumps(list(tags))
        count = 0

        def items():
            nonlocal count
            for count, (path, folder, caption, sha, size, width, height, url) in enumerate(rows, 1):
                yield first_id + count - 1, path, folder, caption, sha, size, width, height, now, tags_json, url

        with _transaction(self.conn):
            self.conn.executemany(
                "INSERT INTO items (id, path, folder, caption, sha256, size, width, height, added, tags, url) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", items(),
            )  # fmt: skip
            self.conn.executemany(
                "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(m, s.path, s.first_id, s.rows, s.dim, s.dtype, s.fingerprint, s.offset) for m, s in shards],
            )
        return count

    def delete(self, ids: Sequence[int]) -> None:
        """Items and their vectors, in one transaction (rows of shards stay in their files)."""
        tables = [t for t in _BLOBS.values() if t in self._tables]
        with _transaction(self.conn):
            for start in range(0, len(ids), 10_000):
                arg = _json_ids(ids[start : start + 10_000])
                self.conn.execute(f"DELETE FROM items WHERE id IN ({_IDS})", (arg,))
                for table in tables:
                    self.conn.execute(f"DELETE FROM {table} WHERE id IN ({_IDS})", (arg,))

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
        rows = self.conn.execute(f"SELECT {self._columns} FROM items WHERE id IN ({_IDS})", (_json_ids(ids),)).fetchall()
        return {r[0]: IndexedItem(*r[:4], r[4] or "", *r[5:9], tuple(json.loads(r[9])), r[10]) for r in rows}

    def ids(self) -> np.ndarray:
        """(n,) every item's id, ascending."""
        return _id_array(self.conn.execute("SELECT id FROM items ORDER BY id"))

    def existing(self, ids: Sequence[int]) -> np.ndarray:
        """(m,) those of ``ids`` that are items (not deleted)."""
        rows = self.conn.execute(f"SELECT id FROM items WHERE id IN ({_IDS})", (_json_ids(ids),))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def max_id(self) -> int:
        """The largest id ever given (AUTOINCREMENT never reuses one, so deleted ids count)."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        return int(row[0]) if row else 0

    def vectors(self, ids: Sequence[int], modality: str = "image") -> np.ndarray:
        """(len(ids), dim) vectors stored as blobs, in the order of ``ids`` (all must exist)."""
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        table = self._blob_table(modality)
        rows = dict(self.conn.execute(f"SELECT id, vector FROM {table} WHERE id IN ({_IDS})", (_json_ids(ids),)).fetchall())
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise SearchIndexError(f"no items with ids {missing[:10]}; they may have been deleted")
        return np.stack([np.frombuffer(rows[int(i)], dtype="<f4") for i in ids])

    def blob_ids(self, modality: str = "image") -> np.ndarray:
        """(n,) ids whose vector of this modality is a blob, ascending."""
        if _BLOBS[modality] not in self._tables:
            return np.zeros(0, dtype=np.int64)
        return _id_array(self.conn.execute(f"SELECT id FROM {_BLOBS[modality]} ORDER BY id"))

    def blob_chunks(self, modality: str = "image", rows: int = 65_536):
        """-> (ids (c,), vectors (c, dim)) chunks of the blob vectors of this modality, by id."""
        if _BLOBS[modality] not in self._tables:
            return
        cursor = self.conn.execute(f"SELECT id, vector FROM {_BLOBS[modality]} ORDER BY id")
        while batch := cursor.fetchmany(rows):
            ids = np.array([r[0] for r in batch], dtype=np.int64)
            yield ids, np.stack([np.frombuffer(r[1], dtype="<f4") for r in batch])

    def all_vectors(self, modality: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """-> (ids (n,), vectors (n, dim)) of every blob vector of this modality, in one pass."""
        parts = list(self.blob_chunks(modality))
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def shards(self, modality: str) -> list[Shard]:
        """The embedding shards that hold this modality's bulk vectors, by first id."""
        if "shards" not in self._tables:
            return []
        rows = self.conn.execute(
            "SELECT path, first_id, rows, dim, dtype, fingerprint, offset FROM shards WHERE modality = ? ORDER BY first_id",
            (modality,),
        )
        return [Shard(*row) for row in rows]

    def _blob_table(self, modality: str) -> str:
        if modality not in _BLOBS:
            raise SearchIndexError(f"unknown modality {modality!r}; choose {' or '.join(MODALITIES)}")
        return _BLOBS[modality]

    def folders(self, limit: int = 1000) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT folder FROM items ORDER BY folder LIMIT ?", (limit,))]

    def known_hashes(self) -> frozenset[str]:
        return frozenset(r[0] for r in self.conn.execute("SELECT sha256 FROM items WHERE sha256 IS NOT NULL"))

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


def _id_array(rows, count: int = -1) -> np.ndarray:
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=count)


def _upgrade(conn: sqlite3.Connection) -> None:
    """A version 1 file gains what version 2 adds (one transaction; a no-op when current)."""
    row = conn.execute("SELECT value FROM info WHERE key = 'format_version'").fetchone()
    if row is None or row[0] != "1":
        return
    with _transaction(conn):
        for statement in _UPGRADE_1:
            if statement.strip():
                conn.execute(statement)
        conn.execute("UPDATE info SET value = ? WHERE key = 'format_version'", (FORMAT_VERSION,))


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
