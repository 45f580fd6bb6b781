"""WebDataset shards, one set of rules for training, evaluation and ``embed``: which file of a
sample is its image, where its captions are, and how a shard pattern names files.

A sample is the files of one key in a tar (``0001.jpg``, ``0001.txt``, ``0001.json``), grouped
by the webdataset library's own rule (the key ends at the first dot of the file name).

- The image is the first of ``IMAGE_KEYS`` present: open_clip's order (``jpg;png;jpeg;webp``)
  and then the other formats ``clipforge.images`` decodes.
- The captions are, in order of preference: the JSON's ``captions`` list (clipforge's data sets
  keep several per image), the JSON's ``caption`` (img2dataset, clip-retrieval), the ``txt``
  file's lines (one caption per line, as a sidecar ``.txt`` beside an image file).
- The JSON's ``concept`` is the class name, where a data set has one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError

__all__ = [
    "IMAGE_KEYS",
    "FIELD_KEYS",
    "SampleFields",
    "expand_shards",
    "is_shard_pattern",
    "image_key",
    "sample_fields",
    "iter_samples",
    "has_end_marker",
]

IMAGE_KEYS = ("jpg", "png", "jpeg", "webp", "tif", "tiff", "bmp", "gif")
FIELD_KEYS = ("json", "txt")  # the files a sample's captions and concept come from


@dataclass(frozen=True)
class SampleFields:
    """What a sample says besides its image."""

    captions: tuple[str, ...]
    concept: str | None = None


def is_shard_pattern(spec: str) -> bool:
    """Whether a source string names tar shards: ``a.tar``, ``a-{000..009}.tar``, ``a.tar::b.tar``."""
    return ".tar" in spec and ("{" in spec or "::" in spec or Path(spec).suffix in (".tar", ".gz", ".tgz"))


def expand_shards(pattern: str) -> list[str]:
    """Brace patterns (``shard-{000..009}.tar``) and several patterns joined by ``::`` -> paths,
    each of which must exist."""
    from braceexpand import braceexpand  # a dependency of webdataset

    urls = [u for part in pattern.split("::") if part for u in braceexpand(part)]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"WebDataset shard {missing[0]} does not exist{more}; check the path or brace pattern")
    if not urls:
        raise DataError(f"{pattern!r} names no shards; give a path or a brace pattern such as data/{{000..009}}.tar")
    return urls


def image_key(sample: dict[str, Any]) -> str | None:
    """The extension of the sample's image file, or None when it has none."""
    return next((k for k in IMAGE_KEYS if k in sample), None)


def sample_fields(sample: dict[str, Any]) -> SampleFields:
    """Captions and concept of a sample whose values are the files' bytes. A broken JSON file
    counts as absent (the captions may still come from the txt)."""
    meta = _json(sample.get("json"))
    captions = meta.get("captions") if isinstance(meta.get("captions"), list) else None
    if not captions and meta.get("caption"):
        captions = [meta["caption"]]
    if not captions and sample.get("txt") is not None:
        captions = _text(sample["txt"]).splitlines()
    cleaned = tuple(str(c).strip() for c in captions or () if str(c).strip())
    concept = meta.get("concept")
    return SampleFields(cleaned, str(concept) if concept else None)


def _json(value: bytes | str | None) -> dict:
    if value is None:
        return {}
    try:
        meta = json.loads(value)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def iter_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in file order, as the webdataset library reads them (values are
    the files' bytes, ``__key__`` the key). A damaged shard raises part-way: callers keep what
    came before."""
    import webdataset as wds

    # No node or worker splitting: the callers decide who reads which shard (webdataset's
    # default refuses to run under torchrun without a node splitter).
    return iter(wds.WebDataset(url, shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None))


def has_end_marker(url: str) -> bool:
    """A whole tar ends with two zero blocks of 512 bytes (POSIX ustar); tarfile ends a stream at
    a cut-off header without an error, so this is the only sign of a truncated shard.
    Compressed shards are not checked (their decompressor reports a cut)."""
    if not url.endswith(".tar"):
        return True
    with open(url, "rb") as f:
        size = f.seek(0, 2)
        if size < 1024 or size % 512:
            return False
        f.seek(size - 1024)
        return not any(f.read(1024))
