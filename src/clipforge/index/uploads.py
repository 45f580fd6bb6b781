"""Files an index owns: images uploaded through the service, kept content-addressed under
``files/`` (two-hex-digit folders by SHA-256), and the thumbnail cache under ``thumbs/``.

A user's own images are only referenced by path and never deleted; an owned file goes when
its item is deleted. A write is atomic (temp file, fsync, rename), so a kill leaves either the
whole file or none under its final name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .metadata import IndexedItem

__all__ = ["FILES", "THUMBS", "store_upload", "remove_item_files"]

FILES, THUMBS = "files", "thumbs"  # folders inside the index root


def store_upload(root: Path, data: bytes, sha256: str, suffix: str) -> Path:
    """Keep an uploaded image inside the index -> its path (written once per content)."""
    path = root / FILES / sha256[:2] / f"{sha256}{suffix}"
    if not path.exists():
        _atomic_write(path, data)
    return path


def remove_item_files(root: Path, items: Iterable[IndexedItem]) -> None:
    """Delete the files the index itself stored for these items, and their thumbnails."""
    for item in items:
        path = Path(item.path)
        if path.parent.parent == root / FILES:  # only files the index itself stored
            path.unlink(missing_ok=True)
        for thumb in (root / THUMBS).glob(f"{item.id}_*.jpg"):
            thumb.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
