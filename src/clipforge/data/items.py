"""One image–caption sample, whose image is read only when needed (in a DataLoader worker).

The image openers are small classes, not closures, so items pickle: DataLoader workers started
with ``spawn`` (macOS, Windows) receive them by value.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

__all__ = ["Item", "PathImage", "BytesImage", "IMAGE_SUFFIXES", "split_captions"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class Item:
    open_image: Callable[[], Image.Image]  # raises OSError/ValueError for a bad image
    captions: tuple[str, ...]  # may be empty: the loader skips (and counts) such an item
    concept: str | None = None  # class name where the source has one
    key: str = ""  # where it came from, for skip reports


@dataclass(frozen=True)
class PathImage:
    path: Path

    def __call__(self) -> Image.Image:
        with Image.open(self.path) as image:
            image.load()  # decode now: a truncated file fails here, not later in a transform
            return image


@dataclass(frozen=True)
class BytesImage:
    data: bytes

    def __call__(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image

    def __repr__(self) -> str:  # not the bytes
        return f"BytesImage({len(self.data)} bytes)"


def split_captions(text: str) -> tuple[str, ...]:
    """Several captions of one image in one field, separated by '|' (empty parts dropped)."""
    return tuple(c.strip() for c in text.split("|") if c.strip())
