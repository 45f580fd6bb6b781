"""A search index kept in Milvus through pymilvus: Milvus Lite (an embedded database in one local
folder, ``milvus.db``) or a Milvus server or cluster (``http://host:19530``). Same API as
IndexStore: add (exact and near duplicates skipped), delete, search, exact metadata filters.

Layout of an index folder::

    milvus.json      where the rows live: {"uri", "collection"} (a relative uri is a Milvus Lite
                     file inside the folder); no secret: a token comes from CLIPFORGE_MILVUS_TOKEN
    milvus.db        the Milvus Lite database (the default uri)
    files/, thumbs/, .lock   as for IndexStore (uploads, thumbnails, the one writer's lock)

In Milvus, collection ``<name>`` holds one row per image (id, vector, the metadata columns, tags
as JSON) and ``<name>_clipforge_info`` the info (model, its config, embed_dim, kind, next_id).

Why a kill loses nothing committed: an ``add`` returns only after Milvus accepted the insert
(Milvus Lite appends it to its write-ahead log and hands the bytes to the OS before answering;
``flush`` also writes the segment files). Ids are reserved in the info collection (next_id)
before the rows that use them are inserted, so a kill in between skips ids and never reuses one:
a deleted id cannot come back as another image.

Filters become one Milvus boolean expression over the stored fields, which Milvus applies before
ranking: k results come back whenever k items match. Values are written as quoted literals
(Milvus Lite has no filter templates). A LIKE pattern cannot say a literal %, _ or \\ the same
way on every Milvus, so a contains/startswith value holding one is matched by a wider pattern and
each candidate row is checked here (``filter_keeps``), then scored exactly. Vectors are
L2-normalised, so the metric is inner product (IP): scores are cosines, as with FAISS. Kind
``flat`` (the default) is exact; with ``hnsw`` a search that returns fewer than k while more
match is redone exactly over the matching items.

Limits: Milvus Lite serves one process at a time (a second process gets a clear error; searchers
beside a writer need a server), and its log reaches the OS on each write but is fsynced only when
it is sealed: safe against a killed process, not a lost machine. Images only (no caption vectors).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import DataError, SearchIndexError
from .ann_search import Hits, exact_search
from .duplicates import AddResult
from .filters import Condition, SearchFilter
from .lock import WriteLock
from .metadata import IndexedItem
from .records import ImageRecord
from .uploads import FILES, remove_item_files, store_upload

__all__ = ["MilvusStore", "MilvusFilter", "KINDS", "POINTER", "TOKEN_ENV", "milvus_filter", "filter_keeps", "connect"]

POINTER, LITE_FILE = "milvus.json", "milvus.db"
TOKEN_ENV = "CLIPFORGE_MILVUS_TOKEN"  # user:password or an API key, for a server that asks
FORMAT_VERSION = "1"
KINDS = {"auto": "FLAT", "flat": "FLAT", "hnsw": "HNSW"}  # --kind -> Milvus index type
_INDEX_PARAMS: dict[str, dict[str, int]] = {"FLAT": {}, "HNSW": {"M": 16, "efConstruction": 200}}
MAX_TOPK = 16_384  # Milvus's cap on a search's limit and on a query's limit + offset
MAX_TEXT = 65_535  # Milvus's VARCHAR max_length, in bytes
CONNECT_TIMEOUT = 10.0  # seconds to wait for a server before saying it cannot be reached
_CHUNK = 1_000  # ids or hashes per get / delete / `in [...]` request
_INSERT_CHUNK = 2_000  # rows per insert request (gRPC caps a message at 64 MB)
_ITEM_FIELDS = ["id", "path", "folder", "caption", "sha256", "size", "width", "height", "added", "tags", "url"]
_NULLABLE = ("caption", "sha256", "url")  # NULL where unknown, as in the SQL store
_REMOTE = re.compile(r"^(https?|tcp|unix)://", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,180}$")  # Milvus collection names, with room for the suffix
_LITE_OPEN: dict[str, int] = {}  # Milvus Lite path -> stores open on it in this process
_LITE_LOCK = threading.Lock()


# ---- filters ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MilvusFilter:
    """A SearchFilter as a Milvus expression. ``expr`` None: nothing can match; '' : everything.
    ``exact`` False: the expression keeps a superset, and ``filter_keeps`` decides each row."""

    expr: str | None
    exact: bool
    flt: SearchFilter


def milvus_filter(flt: SearchFilter | None) -> MilvusFilter:
    """The expression Milvus applies before ranking (conditions joined by ``and``)."""
    flt = flt or SearchFilter()
    parts: list[str | None] = []
    exact = True
    if flt.folder is not None:
        parts.append(f"folder == {_quote(flt.folder)}")
    parts += [f"json_contains(tags, {_quote(tag)})" for tag in flt.tags]
    for op, bound in ((">=", flt.added_from), ("<=", flt.added_to)):
        if bound is not None:
            literal = _literal(float(bound))
            exact &= literal is not None
            parts.append(None if literal is None else f"added {op} {literal}")
    for cond in flt.where:
        expr, cond_exact = _condition_expr(cond)
        if expr == "":  # matches nothing (``in []``)
            return MilvusFilter(None, True, flt)
        exact &= cond_exact
        parts.append(expr)
    return MilvusFilter(" and ".join(f"({p})" for p in parts if p), exact, flt)


def _condition_expr(cond: Condition) -> tuple[str | None, bool]:
    """-> (expression, '' for 'matches nothing', None for 'no constraint here'; exact)."""
    field = cond.field  # checked against filters.FIELDS: a column name
    if cond.op in ("contains", "startswith"):
        pattern = "".join("_" if c in "%_\\" else c for c in cond.value)  # '_' matches any one character
        expr = f"{field} like {_quote(f'%{pattern}%' if cond.op == 'contains' else f'{pattern}%')}"
        exact = not any(c in "%_\\" for c in cond.value)
    elif cond.op == "in":
        if not cond.value:
            return "", True
        literals = [_literal(v) for v in cond.value]
        if None in literals:  # a NaN or an infinity: checked row by row
            return None, False
        expr, exact = f"{field} in [{', '.join(literals)}]", True  # type: ignore[arg-type]
    else:
        literal = _literal(cond.value)
        if literal is None:
            return None, False
        expr, exact = f"{field} {'==' if cond.op == '=' else cond.op} {literal}", True
    if field in _NULLABLE:  # as in SQL: a missing value matches no condition
        expr = f"{field} is not null and {expr}"
    return expr, exact


def _literal(value: Any) -> str | None:
    """A Milvus literal, or None for a float it cannot write (NaN, infinities)."""
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return str(int(value))


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def filter_keeps(flt: SearchFilter, row: dict[str, Any]) -> bool:
    """Whether a stored row passes the filter, by the SQL store's rules (NULL and NaN match nothing)."""
    if flt.folder is not None and row["folder"] != flt.folder:
        return False
    if any(tag not in (row["tags"] or []) for tag in flt.tags):
        return False
    if flt.added_from is not None and not row["added"] >= float(flt.added_from):
        return False
    if flt.added_to is not None and not row["added"] <= float(flt.added_to):
        return False
    return all(_condition_keeps(cond, row[cond.field]) for cond in flt.where)


def _condition_keeps(cond: Condition, value: Any) -> bool:
    if value is None:
        return False
    if cond.op == "in":
        return value in [v for v in cond.value if not (isinstance(v, float) and math.isnan(v))]
    want = cond.value
    if isinstance(want, float) and math.isnan(want):
        return False
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "contains": lambda a, b: b in a,
        "startswith": lambda a, b: a.startswith(b),
    }  # fmt: skip
    return ops[cond.op](value, want)


# ---- connecting -------------------------------------------------------------------------
def connect(uri: str, token: str | None = None) -> Any:
    """A MilvusClient for a server uri or a Milvus Lite path (ending in .db), or SearchIndexError
    with one sentence saying why not."""
    try:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException
    except ImportError:
        raise SearchIndexError("the Milvus backend needs pymilvus and milvus-lite: pip install 'clipforge[milvus]'") from None
    _quiet_pymilvus_logs()
    remote = bool(_REMOTE.match(uri))
    if not remote and not uri.endswith(".db"):
        raise SearchIndexError(f"{uri!r} is neither a Milvus server (http://host:19530) nor a Milvus Lite file (a path ending in .db)")
    if not remote and not Path(uri).parent.is_dir():
        raise SearchIndexError(f"the folder of the Milvus Lite file {uri} does not exist; create it or choose another --milvus-uri")
    try:
        client = MilvusClient(uri=uri, token=token or os.environ.get(TOKEN_ENV, ""), timeout=CONNECT_TIMEOUT)
    except (MilvusException, OSError, ValueError) as e:
        why = getattr(e, "message", None) or str(e)
        if remote:
            raise SearchIndexError(f"cannot reach Milvus at {uri} ({why}); start the server or correct --milvus-uri") from None
        raise SearchIndexError(
            f"cannot open the Milvus Lite database {uri} ({why}); another process may have it open "
            "(Milvus Lite serves one process at a time)"
        ) from None
    if not remote:
        with _LITE_LOCK:
            _LITE_OPEN[os.path.abspath(uri)] = _LITE_OPEN.get(os.path.abspath(uri), 0) + 1
    return client


def _release_lite(path: str) -> None:
    """Stop this process's Milvus Lite server for ``path`` when its last store closes, so that its
    lock frees and the next open (here or in another process) reads the files afresh."""
    key = os.path.abspath(path)
    with _LITE_LOCK:
        _LITE_OPEN[key] = _LITE_OPEN.get(key, 1) - 1
        if _LITE_OPEN[key] > 0:
            return
        del _LITE_OPEN[key]
    try:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(key)
    except (ImportError, AttributeError):  # another milvus-lite generation: it stops at exit
        pass


def _quiet_pymilvus_logs() -> None:
    # pymilvus logs every failed call with a traceback (and milvus-lite a failed start); each one
    # reaches the caller here as a SearchIndexError that says what went wrong. A level the user
    # set on purpose is kept.
    for name in ("pymilvus", "milvus_lite"):
        logger = logging.getLogger(name)
        if logger.level in (logging.NOTSET, logging.WARNING):
            logger.setLevel(logging.CRITICAL)


def _is_milvus_error(e: Exception) -> bool:
    from pymilvus.exceptions import MilvusException

    return isinstance(e, MilvusException)


def _message(e: Exception) -> str:
    return getattr(e, "message", None) or str(e)


# ---- the store --------------------------------------------------------------------------
class MilvusStore:
    """Open with ``MilvusStore.create(...)`` or ``MilvusStore.open(path)``; close when done.

    Methods are thread-safe (one lock, as in IndexStore: the id reservation is read-modify-write).
    One writer per index folder (its .lock); two folders writing one server collection would
    race for ids, so give each folder its own collection.
    """

    LOCK = ".lock"

    def __init__(self, root: Path, client: Any, location: dict[str, str], info: dict[str, str], write_lock: WriteLock | None) -> None:
        self.root, self.client, self._write_lock = root, client, write_lock
        self.uri, self.collection = _resolve_uri(root, location["uri"]), location["collection"]
        self.info_collection = f"{self.collection}_clipforge_info"
        self.info = info
        self._lock = threading.RLock()
        self._closed = False

    # ---- opening and closing -------------------------------------------------------------
    @classmethod
    def create(
        cls, root: str | Path, *, model_ref: str, model_config: dict, uri: str | None = None,
        collection: str = "clipforge", kind: str = "auto", token: str | None = None,
    ) -> "MilvusStore":  # fmt: skip
        """A new index folder whose rows live in Milvus at ``uri`` (default: Milvus Lite in
        ``root/milvus.db``), collection ``collection``; refuses an existing index or collection."""
        root = Path(root)
        if (root / POINTER).exists() or (root / "meta.sqlite").exists():
            raise SearchIndexError(f"{root} already holds an index; use `clipforge index add` or choose another --out")
        if kind not in KINDS:
            raise DataError(f"unknown Milvus index kind {kind!r}; choose one of {', '.join(KINDS)}")
        if not _NAME.match(collection):
            raise DataError(f"{collection!r} cannot name a Milvus collection: use letters, digits and _ (not first a digit)")
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        location = {"uri": _stored_uri(root, uri or LITE_FILE), "collection": collection}
        info = {
            "format_version": FORMAT_VERSION, "model": model_ref, "model_config": json.dumps(model_config),
            "embed_dim": str(model_config["embed_dim"]), "kind": kind, "index_type": KINDS[kind],
            "created": str(time.time()), "next_id": "1",
        }  # fmt: skip
        write_lock = WriteLock.take(root / cls.LOCK)
        try:
            store = cls(root, connect(_resolve_uri(root, location["uri"]), token), location, info, write_lock)
        except BaseException:
            write_lock.release()
            _remove_if_unused(root, created)
            raise
        try:
            store._create_collections()
            _write_json(root / POINTER, location)  # last: a folder without it holds no index
        except BaseException:
            store._write_lock = None
            store._disconnect()
            write_lock.release()
            _remove_if_unused(root, created)
            raise
        return store

    @classmethod
    def open(cls, root: str | Path, *, writable: bool = True, searchable: bool = False, token: str | None = None) -> "MilvusStore":
        """Open an index folder made by ``create``; ``writable`` takes its write lock.
        (``searchable`` is IndexStore's: a Milvus index can always be searched.)"""
        root = Path(root)
        location = _read_pointer(root)
        write_lock = WriteLock.take(root / cls.LOCK) if writable else None
        try:
            client = connect(_resolve_uri(root, location["uri"]), token)
            store = cls(root, client, location, {}, write_lock)
            try:
                store.info = store._open_collections()
            except BaseException:
                store._disconnect()
                raise
        except BaseException:
            if write_lock is not None:
                write_lock.release()
            raise
        return store

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if self._write_lock is not None and not _REMOTE.match(self.uri):
                    self.flush()  # Milvus Lite: segment files now, not only its write-ahead log
            finally:
                self._disconnect()
                if self._write_lock is not None:
                    self._write_lock.release()
                self._write_lock = None

    def _disconnect(self) -> None:
        self._closed = True
        try:
            self.client.close()
        finally:
            if not _REMOTE.match(self.uri):
                _release_lite(self.uri)

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _create_collections(self) -> None:
        from pymilvus import DataType, MilvusClient

        self._refuse_existing()
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description="clipforge image index")
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        for name in ("path", "folder"):
            schema.add_field(name, DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("caption", DataType.VARCHAR, max_length=MAX_TEXT, nullable=True)
        schema.add_field("sha256", DataType.VARCHAR, max_length=128, nullable=True)  # unknown for outside embeddings
        schema.add_field("url", DataType.VARCHAR, max_length=MAX_TEXT, nullable=True)
        for name in ("size", "width", "height"):
            schema.add_field(name, DataType.INT64)
        schema.add_field("added", DataType.DOUBLE)
        schema.add_field("tags", DataType.JSON)
        params = self.client.prepare_index_params()
        index_type = self.info["index_type"]
        params.add_index("vector", index_type=index_type, metric_type="IP", params=_INDEX_PARAMS[index_type])
        params.add_index("sha256", index_type="INVERTED")  # duplicate checks
        params.add_index("folder", index_type="INVERTED")  # folder filters
        self._call("create the collection", self.client.create_collection, self.collection, schema=schema,
                   index_params=params, consistency_level="Strong")  # fmt: skip
        self._create_info_collection()

    def _create_info_collection(self) -> None:
        from pymilvus import DataType, MilvusClient

        # Milvus wants a vector field in every collection; this one is a placeholder.
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description="clipforge index info")
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("value", DataType.VARCHAR, max_length=MAX_TEXT)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type="FLAT", metric_type="IP")
        self._call("create the info collection", self.client.create_collection, self.info_collection, schema=schema,
                   index_params=params, consistency_level="Strong")  # fmt: skip
        self._set_info(self.info)

    def _refuse_existing(self) -> None:
        """A collection of this name is another index (or another program's data): never reused."""
        for name in (self.collection, self.info_collection):
            if not self._call("list collections", self.client.has_collection, name):
                continue
            held = self._vector_dim(name) if name == self.collection else None
            if held is not None and held != self.dim:
                raise SearchIndexError(
                    f"collection {name!r} at {self.uri} holds {held}-dim vectors but this model makes "
                    f"{self.dim}-dim ones; choose another --milvus-collection"
                )
            raise SearchIndexError(f"collection {name!r} already exists at {self.uri}; choose another --milvus-collection or drop it")

    def _open_collections(self) -> dict[str, str]:
        """Load both collections and check them -> the info."""
        for name in (self.collection, self.info_collection):
            if not self._call("list collections", self.client.has_collection, name):
                raise SearchIndexError(f"{self.root} uses collection {name!r} at {self.uri}, which does not exist (dropped?)")
            self._call("load the collection", self.client.load_collection, name)
        rows = self._call("read the index info", self.client.query, self.info_collection, filter='key != ""',
                          output_fields=["key", "value"], limit=1000)  # fmt: skip
        info = {r["key"]: r["value"] for r in rows}
        if info.get("format_version") != FORMAT_VERSION:
            version = info.get("format_version")
            raise SearchIndexError(f"{self.root} has Milvus index format {version!r}; this clipforge reads {FORMAT_VERSION}")
        held = self._vector_dim(self.collection)
        if held != int(info["embed_dim"]):
            raise SearchIndexError(
                f"collection {self.collection!r} at {self.uri} holds {held}-dim vectors but the index's model "
                f"makes {info['embed_dim']}-dim ones; it was changed outside clipforge"
            )
        return info

    def _vector_dim(self, name: str) -> int | None:
        described = self._call("describe the collection", self.client.describe_collection, name)
        for field in described["fields"]:
            if field["name"] == "vector":
                return int(field["params"]["dim"])
        return None

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
    def kind(self) -> str:
        return self.info["index_type"].lower()

    @property
    def kind_label(self) -> str:
        """What build reports name as the index kind."""
        return f"milvus {self.kind}"

    @property
    def files_dir(self) -> Path:
        return self.root / FILES

    @property
    def modalities(self) -> tuple[str, ...]:
        """What the vectors embed: images only (IndexStore's API; caption vectors are not kept here)."""
        return ("image",)

    @property
    def modality(self) -> str:
        return "image"

    @property
    def next_id(self) -> int:
        """The id the next item gets."""
        return int(self.info["next_id"])

    def _check_modality(self, modality: str | None) -> None:
        if modality not in (None, "image"):
            raise SearchIndexError(f"this Milvus index holds image vectors, not {modality}")

    def count(self) -> int:
        with self._lock:
            rows = self._call("count the items", self.client.query, self.collection, filter="", output_fields=["count(*)"])
            return int(rows[0]["count(*)"])

    def summary(self) -> dict[str, Any]:
        """What `clipforge index info` prints."""
        with self._lock:
            folders, added = set(), []
            for row in self._scan(["folder", "added"]):
                folders.add(row["folder"])
                added.append(row["added"])
            return {
                "path": str(self.root), "items": len(added), "folders": len(folders), "model": self.model_ref,
                "embed_dim": self.dim, "kind_requested": self.info.get("kind", "auto"),
                "added_first": min(added, default=None), "added_last": max(added, default=None),
                "modalities": list(self.modalities), "kind": self.kind, "backend": "milvus", "milvus_uri": self.uri,
                "collection": self.collection,
            }  # fmt: skip

    # ---- writing -------------------------------------------------------------------------
    def add(self, records: Sequence[ImageRecord], vectors: np.ndarray, *, near_duplicate: float | None = None) -> AddResult:
        """Insert new images, skipping exact duplicates (same SHA-256, stored or earlier in this
        batch) and, when ``near_duplicate`` is a cosine threshold, images that close to one kept."""
        self._require_writable()
        vectors = self._checked_vectors(vectors, len(records))
        result = AddResult()
        with self._lock:
            keep, repeats = self._select_new(records, vectors, near_duplicate, result)
            if keep:
                ids = self._reserve_ids(len(keep))
                self._insert([records[i] for i in keep], vectors[keep], ids, time.time())
                result.ids += ids
            for path, position in repeats:
                result.duplicates[path] = result.ids[position]
        return result

    def _select_new(
        self, records: Sequence[ImageRecord], vectors: np.ndarray, threshold: float | None, result: AddResult
    ) -> tuple[list[int], list[tuple[str, int]]]:
        """-> (positions to keep, (path, position in keep) of repeats within the batch)."""
        stored = self._ids_of_hashes([r.sha256 for r in records if r.sha256])
        nearest = self._search_raw(vectors, 1, "") if threshold is not None and len(records) else []
        keep: list[int] = []
        first: dict[str, int] = {}
        repeats: list[tuple[str, int]] = []
        for i, rec in enumerate(records):
            if rec.sha256 in stored:
                result.duplicates[rec.path] = stored[rec.sha256]
            elif rec.sha256 and rec.sha256 in first:  # no hash (''): nothing to compare
                repeats.append((rec.path, first[rec.sha256]))
            elif threshold is not None and (near := _nearest(nearest[i], vectors[i], vectors[keep])) and near[1] >= threshold:
                result.near_duplicates[rec.path] = near
            else:
                first[rec.sha256] = len(keep)
                keep.append(i)
        return keep, repeats

    def _reserve_ids(self, n: int) -> list[int]:
        first = int(self.info["next_id"])
        self._set_info({"next_id": str(first + n)})  # before the rows: a kill skips ids, never reuses one
        return list(range(first, first + n))

    def _insert(self, records: Sequence[ImageRecord], vectors: np.ndarray, ids: list[int], now: float) -> None:
        rows = [_row(item_id, rec, vector, now) for item_id, rec, vector in zip(ids, records, vectors)]
        for start in range(0, len(rows), _INSERT_CHUNK):
            chunk = rows[start : start + _INSERT_CHUNK]
            done = self._call("insert the items", self.client.insert, self.collection, chunk)
            if int(done["insert_count"]) != len(chunk):
                raise SearchIndexError(f"Milvus at {self.uri} stored {done['insert_count']} of {len(chunk)} items; run the add again")

    def _set_info(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            if len(value.encode()) > MAX_TEXT:
                raise SearchIndexError(f"index info {key!r} is {len(value.encode()):,} bytes; Milvus stores at most {MAX_TEXT:,}")
        rows = [{"key": k, "value": v, "vector": [1.0, 0.0]} for k, v in values.items()]
        self._call("write the index info", self.client.upsert, self.info_collection, rows)
        self.info.update(values)

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Delete items by id -> the ids that existed. Uploaded files and thumbnails go too."""
        self._require_writable()
        with self._lock:
            items = self.items(ids)
            found = [int(i) for i in ids if int(i) in items]
            for start in range(0, len(found), _CHUNK):
                self._call("delete items", self.client.delete, self.collection, ids=found[start : start + _CHUNK])
        remove_item_files(self.root, [items[i] for i in found])
        return found

    def delete_paths(self, paths: Sequence[str]) -> list[int]:
        """Delete the items stored under these paths -> their ids."""
        with self._lock:
            ids = [int(r["id"]) for r in self._where_in("path", list(paths), ["id"])]
            return self.delete(sorted(ids))

    def store_upload(self, data: bytes, sha256: str, suffix: str) -> Path:
        """Keep an uploaded image inside the index folder (atomic write; content-addressed)."""
        return store_upload(self.root, data, sha256, suffix)

    def flush(self) -> None:
        """Ask Milvus to seal what it holds in memory into segment files."""
        with self._lock:
            if self._write_lock is not None:
                self._call("flush", self.client.flush, self.collection)
                self._call("flush", self.client.flush, self.info_collection)

    def optimize(self) -> bool:
        """Milvus builds and merges its segment indexes itself: nothing to do (IndexStore's API)."""
        return False

    def _require_writable(self) -> None:
        if self._write_lock is None:
            raise SearchIndexError(f"{self.root} was opened read-only; open it with writable=True to change it")

    # ---- reading -------------------------------------------------------------------------
    def items(self, ids: Sequence[int]) -> dict[int, IndexedItem]:
        """id -> IndexedItem for the ids that exist."""
        rows = self._get([int(i) for i in ids if -(2**63) <= int(i) < 2**63], _ITEM_FIELDS[1:])
        return {int(r["id"]): _item(r) for r in rows}

    def vectors(self, ids: Sequence[int], modality: str | None = None) -> np.ndarray:
        """(len(ids), dim) stored vectors in the order of ``ids`` (all must exist)."""
        self._check_modality(modality)
        rows = {int(r["id"]): r["vector"] for r in self._get([int(i) for i in ids], ["vector"])}
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise SearchIndexError(f"no items with ids {missing[:10]}; they may have been deleted")
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray([rows[int(i)] for i in ids], dtype=np.float32)

    def all_vectors(self, modality: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids (n,), vectors (n, dim)) of every item, by id."""
        self._check_modality(modality)
        with self._lock:
            rows = sorted((int(r["id"]), r["vector"]) for r in self._scan(["vector"]))
        ids = np.array([i for i, _ in rows], dtype=np.int64)
        vectors = np.asarray([v for _, v in rows], dtype=np.float32).reshape(len(rows), self.dim)
        return ids, vectors

    def folders(self, limit: int = 1000) -> list[str]:
        with self._lock:
            return sorted({r["folder"] for r in self._scan(["folder"])})[:limit]

    def known_hashes(self) -> frozenset[str]:
        with self._lock:
            return frozenset(r["sha256"] for r in self._scan(["sha256"], "sha256 is not null"))

    def id_of_sha256(self, sha256: str) -> int | None:
        return self._ids_of_hashes([sha256]).get(sha256) if sha256 else None

    def has_sha256(self, sha256: str) -> bool:
        return self.id_of_sha256(sha256) is not None

    def filter_ids(self, flt: SearchFilter) -> np.ndarray:
        """(n,) ids of the items the filter keeps, ascending."""
        with self._lock:
            return self._filter_ids(milvus_filter(flt))

    def _filter_ids(self, mf: MilvusFilter) -> np.ndarray:
        if mf.expr is None:
            return np.zeros(0, dtype=np.int64)
        fields = ["id"] if mf.exact else _ITEM_FIELDS
        ids = [int(r["id"]) for r in self._scan(fields, mf.expr) if mf.exact or filter_keeps(mf.flt, r)]
        return np.array(sorted(ids), dtype=np.int64)

    # ---- searching -----------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, flt: SearchFilter | None = None, modality: str | None = None) -> Hits:
        """(dim,) normalised query -> up to k (id, cosine), best first. Filters are exact: when at
        least k items match, k are returned."""
        self._check_modality(modality)
        query = self._checked_vectors(np.asarray(query, dtype=np.float32)[None], 1)[0]
        if k <= 0:
            return []
        with self._lock:
            mf = milvus_filter(flt)
            if mf.expr is None:
                return []
            if not mf.exact:  # a superset in Milvus: the rows are checked here, then scored exactly
                allowed = self._filter_ids(mf)
                return exact_search(query, min(k, len(allowed)), allowed, self.vectors) if len(allowed) else []
            hits = self._search_raw(query[None], k, mf.expr)[0]
            return hits if len(hits) >= k else self._complete(query, k, mf, hits)

    def search_many(self, queries: np.ndarray, k: int, modality: str | None = None) -> list[Hits]:
        """(q, dim) normalised queries, no filter -> per query what ``search`` returns, in one
        Milvus call (the service's micro-batcher uses this)."""
        self._check_modality(modality)
        queries = self._checked_vectors(queries, len(queries))
        if k <= 0 or len(queries) == 0:
            return [[] for _ in queries]
        with self._lock:
            found = self._search_raw(queries, k, "")
            mf = milvus_filter(None)
            return [hits if len(hits) >= k else self._complete(q, k, mf, hits) for q, hits in zip(queries, found)]

    def _complete(self, query: np.ndarray, k: int, mf: MilvusFilter, hits: Hits) -> Hits:
        """Fewer than k hits: right when fewer match; else an approximate index (HNSW) or Milvus's
        top-k cap missed some, and the matching items are scored exactly."""
        if self._count(mf.expr or "") <= len(hits):
            return hits
        allowed = self._filter_ids(mf)
        return exact_search(query, min(k, len(allowed)), allowed, self.vectors)

    def _search_raw(self, queries: np.ndarray, k: int, expr: str) -> list[Hits]:
        """One Milvus search: (q, dim) -> per query up to min(k, MAX_TOPK) (id, inner product)."""
        limit = min(k, MAX_TOPK)
        params: dict[str, Any] = {"ef": max(limit, 128)} if self.info["index_type"] == "HNSW" else {}
        found = self._call(
            "search", self.client.search, self.collection, data=[q.tolist() for q in queries], limit=limit,
            filter=expr, anns_field="vector", output_fields=["id"], search_params={"metric_type": "IP", "params": params},
        )  # fmt: skip
        return [[(int(h["id"]), float(h["distance"])) for h in row] for row in found]

    def _count(self, expr: str) -> int:
        rows = self._call("count the items", self.client.query, self.collection, filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # ---- Milvus calls ---------------------------------------------------------------------
    def _call(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A pymilvus call; its failure becomes one sentence naming the server and the action."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not _is_milvus_error(e):
                raise
            raise SearchIndexError(f"Milvus at {self.uri} could not {action}: {_message(e)}") from None

    def _get(self, ids: list[int], fields: list[str]) -> list[dict[str, Any]]:
        with self._lock:
            rows: list[dict[str, Any]] = []
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                rows += self._call("read items", self.client.get, self.collection, ids=chunk, output_fields=fields)
            return rows

    def _where_in(self, field: str, values: list[str], fields: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for start in range(0, len(values), _CHUNK):
            chunk = sorted(set(values[start : start + _CHUNK]))
            expr = f"{field} in [{', '.join(_quote(v) for v in chunk)}]"
            rows += self._call("read items", self.client.query, self.collection, filter=expr, output_fields=fields, limit=MAX_TOPK)
        return rows

    def _ids_of_hashes(self, hashes: list[str]) -> dict[str, int]:
        return {r["sha256"]: int(r["id"]) for r in self._where_in("sha256", hashes, ["id", "sha256"])}

    def _scan(self, fields: list[str], expr: str = "") -> Iterator[dict[str, Any]]:
        """Every row the expression keeps, by windows of ids: a window of MAX_TOPK ids holds at
        most MAX_TOPK rows, which one query may return (ids are ours, below next_id). Portable,
        where query iterators need server calls that Milvus Lite lacks."""
        for start in range(0, self.next_id, MAX_TOPK):
            window = f"id >= {start} and id < {start + MAX_TOPK}"
            yield from self._call("read the items", self.client.query, self.collection, filter=f"{window} and ({expr})" if expr else window,
                                  output_fields=["id", *fields], limit=MAX_TOPK)  # fmt: skip

    def _checked_vectors(self, vectors: np.ndarray, n: int) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (n, self.dim):
            raise DataError(f"vectors of shape {vectors.shape} do not fit this index: it holds {self.dim}-dim vectors, {n} expected")
        if not np.isfinite(vectors).all():
            raise DataError("vectors must be finite numbers")
        return vectors


# ---- rows, pointers, uris ---------------------------------------------------------------
def _nearest(stored: Hits, vector: np.ndarray, pending: np.ndarray) -> tuple[int, float] | None:
    """Nearest stored item -> (id, cosine); an image pending in this batch gives id -1."""
    best = stored[0] if stored else None
    if len(pending):
        sim = float((pending @ vector).max())
        if best is None or sim > best[1]:
            best = (-1, sim)
    return best


def _row(item_id: int, rec: ImageRecord, vector: np.ndarray, now: float) -> dict[str, Any]:
    for name in ("path", "folder", "url"):
        if len((getattr(rec, name, None) or "").encode()) > MAX_TEXT:
            raise SearchIndexError(f"{rec.path[:200]}: the {name} is longer than Milvus's {MAX_TEXT:,}-byte limit")
    caption = rec.caption
    if caption is not None and len(caption.encode()) > MAX_TEXT:  # captions are cut, not refused
        caption = caption.encode()[:MAX_TEXT].decode(errors="ignore")
    return {
        "id": item_id, "vector": vector.tolist(), "path": rec.path, "folder": rec.folder, "caption": caption,
        "sha256": rec.sha256 or None, "size": rec.size, "width": rec.width, "height": rec.height, "added": now,
        "tags": list(rec.tags), "url": getattr(rec, "url", None),
    }  # fmt: skip


def _item(row: dict[str, Any]) -> IndexedItem:
    return IndexedItem(
        id=int(row["id"]), path=row["path"], folder=row["folder"], caption=row["caption"], sha256=row["sha256"],
        size=int(row["size"]), width=int(row["width"]), height=int(row["height"]), added=float(row["added"]),
        tags=tuple(row["tags"] or ()), url=row.get("url"),
    )  # fmt: skip


def _stored_uri(root: Path, uri: str) -> str:
    """A server uri as given; a Milvus Lite path relative to the folder when inside it (the folder
    can move), else absolute."""
    if _REMOTE.match(uri):
        return uri
    path = Path(uri) if Path(uri).is_absolute() else (root / uri if uri == LITE_FILE else Path.cwd() / uri)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _resolve_uri(root: Path, stored: str) -> str:
    if _REMOTE.match(stored) or Path(stored).is_absolute():
        return stored
    return str(root.resolve() / stored)


def _read_pointer(root: Path) -> dict[str, str]:
    path = root / POINTER
    if not path.is_file():
        raise SearchIndexError(
            f"no Milvus index at {root}; build one with `clipforge index build SOURCE --model M --out {root} --backend milvus`"
        )
    try:
        location = json.loads(path.read_text(encoding="utf-8"))
        return {"uri": str(location["uri"]), "collection": str(location["collection"])}
    except (ValueError, KeyError, TypeError):
        raise SearchIndexError(f"{path} is damaged; it should hold {{\"uri\": ..., \"collection\": ...}}") from None


def _remove_if_unused(root: Path, created: bool) -> None:
    """A failed create leaves no folder behind that it made (a Milvus Lite file in it stays)."""
    if created:
        (root / MilvusStore.LOCK).unlink(missing_ok=True)
        try:
            root.rmdir()
        except OSError:  # not empty
            pass


def _write_json(path: Path, value: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
