"""One image–caption sample, whose image is read only when needed (in a DataLoader worker).

The image openers are small classes, not closures, so items pickle: DataLoader workers started
with ``spawn`` (macOS, Windows) receive them by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from ..images import decode_image

__all__ = ["Item", "PathImage", "BytesImage", "split_captions"]


@dataclass(frozen=True)
class Item:
    open_image: Callable[[], Image.Image]  # raises OSError/ValueError for a bad image
    captions: tuple[str, ...]  # may be empty: the loader skips (and counts) such an item
    concept: str | None = None  # class name where the source has one
    key: str = ""  # where it came from, for skip reports
    source: str = ""  # which of several mixed sources it belongs to (data/mixture.py)


@dataclass(frozen=True)
class PathImage:
    path: Path

    def __call__(self) -> Image.Image:
        # Decoded now: a truncated file fails here, not later in a transform. The bytes are read
        # as they are (an empty file is PIL's UnidentifiedImageError, the reason counted).
        return decode_image(self.path.read_bytes())


@dataclass(frozen=True)
class BytesImage:
    data: bytes

    def __call__(self) -> Image.Image:
        return decode_image(self.data)

    def __repr__(self) -> str:  # not the bytes
        return f"BytesImage({len(self.data)} bytes)"


def split_captions(text: str) -> tuple[str, ...]:
    """Several captions of one image in one field, separated by '|' (empty parts dropped)."""
    return tuple(c.strip() for c in text.split("|") if c.strip())
