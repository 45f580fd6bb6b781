"""Several in-memory sources mixed by weight, one composition per epoch.

    data.train = "openmoji-48::tuxpaint-48::openclipart-48"
    data.train_weights = [0.6, 0.15, 0.25]

The streaming path mixes shard sets as it reads them (``data/stream.py``). Small sources
(built clip-art sets, tables, image folders) stay in memory, where the concept-aware batching
works: each epoch holds ``size`` samples (default: all sources' samples together), each source
contributing its weight's share. A source's share is drawn from seeded permutations of it: every
sample once before any repeats when the share is larger than the source, a different subset
each epoch when it is smaller. The composition depends on (seed, epoch) only, so a run resumed
mid-epoch sees the same samples.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from ..errors import DataError
from .batch import mix_seed
from .items import Item
from .shard_sets import check_weights

__all__ = ["MixedSource", "mixed_sources", "mix_epoch", "shares", "concept_filter"]


@dataclass(frozen=True)
class MixedSource:
    name: str  # the part of the source string, for the per-source metrics
    items: Sequence[Item]
    weight: float


def mixed_sources(parts: Sequence[tuple[str, Sequence[Item]]], weights: Sequence[float]) -> list[MixedSource]:
    """One ``MixedSource`` per (name, items), its items tagged with the name."""
    check_weights(weights, len(parts))
    out = []
    for (name, items), weight in zip(parts, weights):
        if not items and weight > 0:
            raise DataError(f"the source {name!r} has no samples but a weight of {weight}; fix the path or give it 0")
        out.append(MixedSource(name, [dataclasses.replace(it, source=name) for it in items], float(weight)))
    return out


def shares(sources: Sequence[MixedSource], size: int) -> list[int]:
    """Samples per source in an epoch of ``size``: proportional to the weights, rounded so they
    add up to ``size`` (largest remainders first)."""
    total = sum(s.weight for s in sources)
    exact = [size * s.weight / total for s in sources]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(sources)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    return counts


def mix_epoch(sources: Sequence[MixedSource], seed: int, epoch: int, size: int | None = None) -> list[Item]:
    """The items of one epoch, source by source (the loader's per-epoch permutation shuffles them)."""
    size = sum(len(s.items) for s in sources) if size is None else size
    out: list[Item] = []
    for index, (source, count) in enumerate(zip(sources, shares(sources, size))):
        out += [source.items[i] for i in _draw(len(source.items), count, mix_seed(seed, epoch, index))]
    return out


def _draw(n: int, count: int, seed: int) -> list[int]:
    # count indices of range(n): whole permutations, then part of one more.
    g = torch.Generator().manual_seed(seed % 2**63)
    picks: list[int] = []
    while len(picks) < count:
        picks += torch.randperm(n, generator=g).tolist()[: count - len(picks)]
    return picks


def concept_filter(concepts: Iterable[str]) -> Callable[[Item], bool]:
    """item -> True when it names one of ``concepts``: as its concept, or as a whole phrase in
    a caption (case-insensitive). Keeps an evaluation's held-out concepts out of training
    sources that were not split with it (another data set may draw "a dog" too)."""
    names = sorted({c.strip().lower() for c in concepts if c.strip()}, key=len, reverse=True)
    if not names:
        return lambda item: False
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b")
    exact = set(names)

    def names_one(item: Item) -> bool:
        return (item.concept or "").lower() in exact or any(pattern.search(c.lower()) for c in item.captions)

    return names_one
