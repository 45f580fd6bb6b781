"""WebDataset tar shards: local paths, brace patterns (``shard-{000..009}.tar``) and several
patterns joined by ``::``.

Shards are read once into memory (compressed images, a few KB each): fine up to a few hundred
thousand samples, and it gives the loader random access for a deterministic, resumable order.
A shard that breaks part-way keeps the samples before the damage; the rest is counted in
``skipped`` under the shard's name (never dropped silently).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DataError
from .items import BytesImage, Item

__all__ = ["expand_shards", "shard_items", "IMAGE_KEYS"]

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def expand_shards(pattern: str) -> list[str]:
    from braceexpand import braceexpand  # a dependency of webdataset

    urls = [u for part in pattern.split("::") if part for u in braceexpand(part)]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"WebDataset shard {missing[0]} does not exist{more}; check the path or brace pattern")
    return urls


def shard_items(urls: list[str], skipped: Counter[str]) -> list[Item]:
    items: list[Item] = []
    for url in urls:
        before = len(items)
        try:
            for sample in _samples(url):
                item = _item(sample, skipped)
                if item is not None:
                    items.append(item)
        except Exception as e:  # noqa: BLE001  a damaged shard costs its damaged part, not the run
            skipped[f"{Path(url).name}: unreadable after {len(items) - before} samples ({type(e).__name__})"] += 1
            continue
        if not _has_end_marker(url):
            # tarfile ends a stream at a cut-off header without an error: this is the only sign.
            skipped[f"{Path(url).name}: truncated (no end-of-archive marker) after {len(items) - before} samples"] += 1
    return items


def _has_end_marker(url: str) -> bool:
    """A whole tar ends with two zero blocks of 512 bytes (POSIX ustar). Compressed shards are
    not checked (their decompressor reports a cut)."""
    if not url.endswith(".tar"):
        return True
    with open(url, "rb") as f:
        size = f.seek(0, 2)
        if size < 1024 or size % 512:
            return False
        f.seek(size - 1024)
        return not any(f.read(1024))


def _samples(url: str) -> Any:
    import webdataset as wds

    # No node or worker splitting: every rank reads every sample and the loader gives each
    # rank its own slice of a shared order (webdataset's default refuses to run under torchrun).
    return wds.WebDataset(url, shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None)


def _item(sample: dict[str, Any], skipped: Counter[str]) -> Item | None:
    image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if image is None:
        skipped["shard sample without an image (png/jpg/webp)"] += 1
        return None
    meta = json.loads(sample["json"]) if "json" in sample else {}
    captions = meta.get("captions") or ([meta["caption"]] if meta.get("caption") else [])
    if not captions and "txt" in sample:
        captions = sample["txt"].decode("utf-8", errors="replace").splitlines()
    captions = tuple(str(c).strip() for c in captions if str(c).strip())
    return Item(BytesImage(image), captions, meta.get("concept"), sample["__key__"])
