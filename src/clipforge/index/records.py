"""The metadata of one image as the index stores it, made from what the decoding loop learnt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # not at run time: the store (and `clipforge index info`) must not import torch
    from ..inference.image_batches import DecodedImage

__all__ = ["ImageRecord", "image_record"]


@dataclass(frozen=True)
class ImageRecord:
    """The metadata of one image (or text), as stored in the index's SQLite table; ``sha256``
    is '' where unknown (embeddings made elsewhere)."""

    path: str
    folder: str
    sha256: str
    size: int
    width: int
    height: int
    caption: str | None = None
    tags: tuple[str, ...] = ()
    url: str | None = None  # where the image came from (clip-retrieval's metadata), if known


def image_record(path: Path, root: Path, decoded: DecodedImage, tags: Sequence[str] = ()) -> ImageRecord:
    """A file under ``root`` -> its record: the absolute path, the folder relative to ``root``,
    and the sidecar captions (one per line) as one caption."""
    folder = path.parent.relative_to(root).as_posix()
    return ImageRecord(
        path=str(path.resolve()), folder="" if folder == "." else folder, sha256=decoded.sha256 or "",
        size=decoded.size, width=decoded.width, height=decoded.height,
        caption="\n".join(decoded.captions) or None, tags=tuple(tags),
    )  # fmt: skip
