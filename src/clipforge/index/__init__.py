"""Semantic image search index: SQLite metadata + vectors (source of truth) and a FAISS cache.

Names load on first use, from an explicit table, so reading an index (``IndexStore``,
``index_info``: `clipforge index info`) imports neither torch, FAISS nor FastAPI; building and
searching, which run the model, import torch when they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BuildReport": "build", "build_index": "build", "add_images": "build", "delete_items": "build",
    "build_from_embeddings": "bulk",
    "index_info": "info",
    "Condition": "filters", "SearchFilter": "filters",
    "Concept": "moderation", "Moderator": "moderation", "load_concepts": "moderation",
    "Query": "search", "Result": "search", "Searcher": "search", "open_searcher": "search",
    "IndexStore": "store", "IndexedItem": "store",
    "MilvusStore": "milvus",
    "open_store": "backend", "open_index_searcher": "backend", "build_milvus_index": "backend",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
