"""Queries against an index: text, image, an indexed item, a raw vector, or a weighted mix;
exact metadata filters; moderation scores on every result and optional hiding of flagged ones.

This is the library the service and the CLI call; it holds the store, the model that built the
index (checked against the config stored in it) and the moderation concepts.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DataError, SearchIndexError
from ..images import MAX_IMAGE_PIXELS, SUFFIX_BY_FORMAT, decode_image
from .embedder import Embedder, combine_queries, load_embedder
from .filters import SearchFilter
from .moderation import Moderator, load_concepts
from .records import ImageRecord
from .store import AddResult, IndexStore, IndexedItem

__all__ = ["Query", "Result", "Searcher", "open_searcher", "check_model"]

MAX_QUERY_CHARS = 10_000
MAX_K = 1000


@dataclass(frozen=True)
class Query:
    """What to look for. Parts present are embedded, weighted, summed and re-normalised."""

    text: str | None = None
    image: bytes | None = None  # encoded image file
    image_id: int | None = None  # an item already in the index ("more like this")
    vector: tuple[float, ...] | None = None  # a precomputed embedding
    text_weight: float = 1.0
    image_weight: float = 1.0

    def is_empty(self) -> bool:
        return not self.text and self.image is None and self.image_id is None and self.vector is None


@dataclass(frozen=True)
class Result:
    item: IndexedItem
    score: float  # cosine similarity to the query
    moderation: dict[str, dict[str, float | bool]]

    def to_dict(self) -> dict[str, Any]:
        return {**self.item.to_dict(), "score": round(self.score, 6), "moderation": self.moderation}


def check_model(store: IndexStore, embedder: Embedder) -> None:
    """The query model must be the one that embedded the index, or scores mean nothing."""
    stored = store.model_config
    current = embedder.model.config.to_dict()
    if json.dumps(stored, sort_keys=True) != json.dumps(current, sort_keys=True):
        raise SearchIndexError(
            f"the model {embedder.model_ref!r} differs from the one this index was built with "
            f"({store.model_ref!r}); query it with that model or rebuild the index"
        )


class Searcher:
    def __init__(self, store: IndexStore, embedder: Embedder, moderator: Moderator, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        check_model(store, embedder)
        self.store, self.embedder, self.moderator, self.max_pixels = store, embedder, moderator, max_pixels
        self._write_lock = threading.Lock()
        # Unfiltered (vector, k) -> hits; a service swaps in a micro-batcher (serve/batching.py).
        self.search_unfiltered: Callable[[np.ndarray, int], list[tuple[int, float]]] = store.search
        self.on_close: list[Callable[[], None]] = []  # run before the index closes (stop batchers)

    def close(self) -> None:
        """Run the ``on_close`` callbacks, then close the index."""
        for callback in self.on_close:
            callback()
        self.store.close()

    # ---- queries -------------------------------------------------------------------------
    def query_vector(self, q: Query) -> np.ndarray:
        """Query -> (dim,) normalised vector."""
        if q.is_empty():
            raise DataError("empty query: give a text, an image, an image id or a vector")
        if q.text_weight < 0 or q.image_weight < 0:
            raise DataError("query weights must be >= 0")
        parts: list[tuple[np.ndarray, float]] = []
        if q.text:
            if len(q.text) > MAX_QUERY_CHARS:
                raise DataError(f"query text is {len(q.text):,} characters; the limit is {MAX_QUERY_CHARS:,}")
            parts.append((self.embedder.text(q.text), q.text_weight))
        if q.image is not None:
            parts.append((self.embedder.image_bytes(q.image, self.max_pixels), q.image_weight))
        if q.image_id is not None:
            if not self.store.items([q.image_id]):
                raise DataError(f"no item with id {q.image_id}; it may have been deleted")
            parts.append((self.store.vectors([q.image_id])[0], q.image_weight))
        if q.vector is not None:
            parts.append((self._checked_vector(q.vector), q.image_weight))
        return combine_queries(parts)

    def _checked_vector(self, vector: Sequence[float]) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32)
        if v.shape != (self.store.dim,) or not np.isfinite(v).all() or not np.any(v):
            raise DataError(f"an embedding query must be {self.store.dim} finite numbers, not all zero")
        return v

    def search(
        self, q: Query, k: int = 10, flt: SearchFilter | None = None, hide_flagged: bool | list[str] = False,
        modality: str | None = None,
    ) -> list[Result]:  # fmt: skip
        """Top-k results; ``hide_flagged``: True (any concept) or a list of concept names to hide.
        Hidden results are replaced by the next ones, so k come back while k unflagged match.
        ``modality``: which vectors to search, "image" or "text" (captions), in an index that
        holds them (``store.modalities``; default: its first)."""
        if not 1 <= k <= MAX_K:
            raise DataError(f"k must be between 1 and {MAX_K}, got {k}")
        return self.search_vector(self.query_vector(q), k, flt, hide_flagged, modality)

    def search_vector(
        self, vector: np.ndarray, k: int, flt: SearchFilter | None = None, hide_flagged: bool | list[str] = False,
        modality: str | None = None,
    ) -> list[Result]:  # fmt: skip
        modalities = getattr(self.store, "modalities", ("image",))  # a duck-typed store (milvus.py) holds images
        if modality not in (None, *modalities):
            raise DataError(f"this index holds {' and '.join(modalities)} embeddings, not {modality}")
        other = modality not in (None, modalities[0])  # the micro-batcher serves the default one
        by_modality = {} if modality is None else {"modality": modality}
        only = hide_flagged if isinstance(hide_flagged, list) else None
        unknown = sorted(set(only or ()) - set(self.moderator.names))
        if unknown:
            raise DataError(f"unknown moderation concepts {unknown}; this service has {self.moderator.names}")
        fetch = k
        while True:
            if (flt is None or flt.is_empty()) and not other:
                hits = self.search_unfiltered(vector, fetch)
            else:
                hits = self.store.search(vector, fetch, flt, **by_modality)
            results = self._results(hits)
            if hide_flagged:
                results = [r for r in results if not _is_flagged(r, only)]
            if len(results) >= k or len(hits) < fetch:  # enough, or nothing more to fetch
                return results[:k]
            fetch *= 4

    def _results(self, hits: list[tuple[int, float]]) -> list[Result]:
        if not hits:
            return []
        ids = [i for i, _ in hits]
        items = self.store.items(ids)
        scores = self.moderator.scores(self.store.vectors(ids))  # (n, concepts)
        return [Result(items[i], s, self.moderator.describe(row)) for (i, s), row in zip(hits, scores) if i in items]

    # ---- single-image tools --------------------------------------------------------------
    def moderate(self, data: bytes) -> dict[str, dict[str, float | bool]]:
        vector = self.embedder.image_bytes(data, self.max_pixels)
        return self.moderator.describe(self.moderator.scores(vector[None])[0])

    # ---- writing through the service -----------------------------------------------------
    def add_image(
        self, data: bytes, filename: str = "", *, caption: str | None = None, tags: Sequence[str] = (),
        folder: str = "uploads", near_duplicate: float | None = None,
    ) -> AddResult:  # fmt: skip
        """Add an uploaded image (same rules as ``index add``); its bytes are kept inside the
        index, written before the row that points at them is committed."""
        image = decode_image(data, self.max_pixels)
        vector = self.embedder.images([image])  # (1, dim)
        sha = hashlib.sha256(data).hexdigest()
        with self._write_lock:
            path = self.store.store_upload(data, sha, _suffix_for(image.format, filename))
            record = ImageRecord(
                path=str(path), folder=folder, sha256=sha, size=len(data), width=image.width,
                height=image.height, caption=caption or None, tags=tuple(tags),
            )  # fmt: skip
            result = self.store.add([record], vector, near_duplicate=near_duplicate)
            if not result.ids and not self.store.has_sha256(sha):  # a near duplicate: not kept
                path.unlink(missing_ok=True)
        return result

    def delete(self, ids: Sequence[int]) -> list[int]:
        with self._write_lock:
            return self.store.delete(ids)




def _suffix_for(fmt: str | None, filename: str) -> str:
    """The stored file's suffix follows the decoded format, not the name the client sent."""
    named = Path(filename).suffix.lower()
    return SUFFIX_BY_FORMAT.get(fmt or "", named if named in SUFFIX_BY_FORMAT.values() else ".img")


def _is_flagged(result: Result, only: list[str] | None) -> bool:
    return any(v["flagged"] for name, v in result.moderation.items() if only is None or name in only)


def open_searcher(index: str | Path, *, concepts: str | Path | None = None, writable: bool = True) -> Searcher:
    """Open an index with its own model and the moderation concepts (default file if None).

    ``writable=False`` searches without the write lock (FAISS reconciled in memory), so several
    read-only searchers can run beside the one process that writes."""
    store = IndexStore.open(index, writable=writable, searchable=True)
    try:
        if not store.model_ref:
            raise SearchIndexError(
                f"{index} was built from embeddings without a model, so it cannot embed text or image queries; "
                "rebuild it with --model (the model that made the embeddings), or search it by vector (IndexStore.search)"
            )
        embedder = load_embedder(store.model_ref)
        moderator = Moderator(load_concepts(concepts), embedder.texts, float(embedder.model.scale().detach()))
        return Searcher(store, embedder, moderator)
    except BaseException:
        store.close()
        raise

