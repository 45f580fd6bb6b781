"""An image folder with sidecar captions: ``cat.png`` + ``cat.txt`` (one caption per line).

Sub-folders are searched too. An image without a sidecar has no caption: the loader skips and
counts it, so a forgotten caption file shows in the training log rather than vanishing.
"""

from __future__ import annotations

from pathlib import Path

from .items import IMAGE_SUFFIXES, Item, PathImage

__all__ = ["folder_items"]


def folder_items(root: Path) -> list[Item]:
    items = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        sidecar = path.with_suffix(".txt")
        lines = sidecar.read_text(encoding="utf-8", errors="replace").splitlines() if sidecar.is_file() else []
        captions = tuple(line.strip() for line in lines if line.strip())
        items.append(Item(PathImage(path), captions, key=str(path.relative_to(root))))
    return items
