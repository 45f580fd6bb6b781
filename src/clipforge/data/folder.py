"""An image folder with sidecar captions: ``cat.png`` + ``cat.txt`` (one caption per line).

Sub-folders are searched too. An image without a sidecar has no caption: the loader skips and
counts it, so a forgotten caption file shows in the training log rather than vanishing.
"""

from __future__ import annotations

from pathlib import Path

from ..images import find_images, sidecar_captions
from .items import Item, PathImage

__all__ = ["folder_items"]


def folder_items(root: Path) -> list[Item]:
    return [Item(PathImage(p), sidecar_captions(p), key=str(p.relative_to(root))) for p in find_images(root)]
