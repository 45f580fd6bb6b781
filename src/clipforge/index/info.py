"""`clipforge index info`: an index's counts, model and parameters, read without the model.

Apart from build.py so that it imports no torch: it reads SQLite (and FAISS) only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .store import IndexStore

__all__ = ["index_info"]


def index_info(index: str | Path) -> dict[str, Any]:
    """Counts, model and index parameters, read without taking the write lock."""
    with IndexStore.open(index, writable=False) as store:
        return store.summary()
