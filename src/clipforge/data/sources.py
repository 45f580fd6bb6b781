"""Image–caption sources, chosen from one string:

=================================  ==========================================================
``data.csv`` / ``data.tsv``        columns ``image`` and ``caption`` (names configurable)
``data.jsonl``                     ``{"image": ..., "caption": ...}`` or ``"captions": [...]``
``folder/``                        images + sidecar ``.txt`` captions, one per line
``folder/`` with ``manifest.json`` a data set built by ``clipforge.datasets`` (one split)
``shard-{000..009}.tar``           WebDataset shards (``png``/``jpg`` + ``json``/``txt``)
``synthetic:N``                    N coloured shapes, for tests
=================================  ==========================================================

Each becomes a list of ``Item``s. Problems found while reading (a damaged shard, a row without
an image) are counted in ``Source.skipped``; unreadable images and empty captions are found
later, when the loader decodes them, and counted there.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .folder import folder_items
from ..wds import expand_shards, is_shard_pattern
from .items import Item
from .synthetic import synthetic_items
from .tables import jsonl_items, table_items
from .shard_items import shard_items

__all__ = ["Item", "Source", "DataWarning", "open_source", "load_items", "synthetic_items"]


class DataWarning(UserWarning):
    """Samples left out while reading a source (the count and the reason)."""


@dataclass
class Source:
    spec: str
    items: list[Item]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> samples left out while reading


def open_source(source: str | Path, image_key: str = "image", caption_key: str = "caption",
                split: str = "train") -> Source:  # fmt: skip
    """Read any supported source. ``split`` picks the split of a built data set folder."""
    spec = str(source)
    skipped: Counter[str] = Counter()
    items = _read(spec, image_key, caption_key, split, skipped)
    if not items:
        detail = f" ({_describe(skipped)} left out)" if skipped else ""
        raise DataError(f"{spec} contains no image–caption samples{detail}; check the path and format")
    return Source(spec, items, skipped)


def load_items(source: str | Path, image_key: str = "image", caption_key: str = "caption",
               split: str = "train") -> list[Item]:  # fmt: skip
    """``open_source(...).items``; what was left out while reading is reported as a DataWarning."""
    opened = open_source(source, image_key, caption_key, split)
    if opened.skipped:
        warnings.warn(f"{opened.spec}: left out {_describe(opened.skipped)}", DataWarning, stacklevel=2)
    return opened.items


def _describe(skipped: Counter[str]) -> str:
    return "; ".join(f"{n} × {reason}" for reason, n in sorted(skipped.items()))


def _read(spec: str, image_key: str, caption_key: str, split: str, skipped: Counter[str]) -> list[Item]:
    if spec.startswith("synthetic:"):
        return synthetic_items(_count(spec))
    path = Path(spec)
    if is_shard_pattern(spec):
        return shard_items(expand_shards(spec), skipped)
    if path.is_dir():
        return _folder(path, split, skipped)
    if not path.exists():
        raise DataError(f"data path {path} does not exist; give a CSV/TSV, JSONL, image folder, .tar shards "
                        "or synthetic:N")  # fmt: skip
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return table_items(path, image_key, caption_key, skipped)
    if suffix in (".jsonl", ".json"):
        return jsonl_items(path, image_key, caption_key, skipped)
    raise DataError(f"{path}: unknown data format; use .csv, .tsv, .jsonl, a folder, .tar shards or synthetic:N")


def _count(spec: str) -> int:
    try:
        n = int(spec.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise DataError(f"{spec!r}: write synthetic:N with N a positive number of samples")
    return n


def _folder(path: Path, split: str, skipped: Counter[str]) -> list[Item]:
    from ..datasets.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest is not None:  # a built data set: the shards of one split
        shards = manifest.shard_paths(split)
        if not shards:
            raise DataError(f"the {manifest.name} data set in {path} has no {split!r} samples; "
                            f"its splits hold {manifest.counts}")  # fmt: skip
        return shard_items(shards, skipped)
    shards = sorted(str(p) for p in path.glob("*.tar"))
    return shard_items(shards, skipped) if shards else folder_items(path)
