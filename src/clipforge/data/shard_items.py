"""Training items from WebDataset tar shards (the sample rules are ``clipforge.wds``'s).

Shards are read once into memory (compressed images, a few KB each): fine up to a few hundred
thousand samples, and it gives the loader random access for a deterministic, resumable order.
A shard that breaks part-way keeps the samples before the damage; the rest is counted in
``skipped`` under the shard's name (never dropped silently).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .. import wds
from .items import BytesImage, Item

__all__ = ["shard_items"]


def shard_items(urls: list[str], skipped: Counter[str]) -> list[Item]:
    items: list[Item] = []
    for url in urls:
        before = len(items)
        try:
            for sample in wds.iter_samples(url):
                item = _item(sample, skipped)
                if item is not None:
                    items.append(item)
        except Exception as e:  # noqa: BLE001  a damaged shard costs its damaged part, not the run
            skipped[f"{Path(url).name}: unreadable after {len(items) - before} samples ({type(e).__name__})"] += 1
            continue
        if not wds.has_end_marker(url):
            skipped[f"{Path(url).name}: truncated (no end-of-archive marker) after {len(items) - before} samples"] += 1
    return items


def _item(sample: dict[str, Any], skipped: Counter[str]) -> Item | None:
    key = wds.image_key(sample)
    if key is None:
        skipped["shard sample without an image (png/jpg/webp)"] += 1  # the usual ones; see wds.IMAGE_KEYS
        return None
    fields = wds.sample_fields(sample)
    return Item(BytesImage(sample[key]), fields.captions, fields.concept, sample["__key__"])
