"""Semantic image search index: SQLite metadata + vectors (source of truth) and a FAISS cache.

Importing this package imports neither FAISS nor FastAPI; FAISS loads when an index is opened.
"""

from .build import BuildReport, add_images, build_index, delete_items, index_info
from .filters import Condition, SearchFilter
from .moderation import Concept, Moderator, load_concepts
from .search import Query, Result, Searcher, open_searcher
from .store import IndexStore, IndexedItem

__all__ = [
    "BuildReport", "build_index", "add_images", "delete_items", "index_info",
    "Condition", "SearchFilter", "Concept", "Moderator", "load_concepts",
    "Query", "Result", "Searcher", "open_searcher", "IndexStore", "IndexedItem",
]  # fmt: skip
