"""Which shards a streaming run reads, how many samples they hold, and whether to stream at all.

A training source string names one or more shard sets joined by ``::``:

    data.train = "a/{000..999}.tar::b/{000..099}.tar"
    data.train_weights = [0.7, 0.3]        # one weight per ``::`` part: two sources, mixed

Without weights the parts are one source (open_clip's meaning of ``::``). A part may also be a
folder of ``.tar`` files or a data set folder built by ``clipforge data build`` (its split).

Streaming or in memory (``data.stream``: ``null`` = auto, ``true``, ``false``): the in-memory
path reads every shard into memory once (the compressed images) and gets a random-access order;
it is chosen automatically for shard sets under ``STREAM_ABOVE_BYTES`` on disk and for every
non-shard source (tables and image folders hold paths only); with weights it mixes the parts
per epoch (``data/mixture.py``). Resampling, or more bytes than that, mean streaming.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from ..wds import is_shard_pattern

__all__ = ["ShardSet", "STREAM_ABOVE_BYTES", "shard_sets", "check_weights", "is_shard_source", "should_stream", "known_size"]

# Above this many bytes of shards the in-memory path would hold as much in RAM: stream instead.
STREAM_ABOVE_BYTES = 1 << 30


@dataclass(frozen=True)
class ShardSet:
    """One source of a mixture: its shard paths (some may be missing: counted when reached)."""

    name: str  # the part of the source string it came from, for the per-source metrics
    urls: tuple[str, ...]
    weight: float = 1.0


def is_shard_source(spec: str, split: str = "train") -> bool:
    """Whether every ``::`` part of ``spec`` names shards (a pattern, a folder of tars, a built
    data set folder)."""
    if spec.startswith("synthetic:"):
        return False
    return all(_part_is_shards(part, split) for part in spec.split("::") if part)


def _part_is_shards(part: str, split: str) -> bool:
    if is_shard_pattern(part):
        return True
    path = Path(part)
    return path.is_dir() and (_manifest_shards(path, split) is not None or any(path.glob("*.tar")))


def shard_sets(spec: str, weights: Sequence[float] | None = None, split: str = "train") -> list[ShardSet]:
    """The sources of ``spec``: one per ``::`` part with ``weights``, else one. Raises DataError
    before training starts when a part matches no existing shard."""
    parts = [p for p in spec.split("::") if p]
    if not parts:
        raise DataError(f"{spec!r} names no shards; give a path or a brace pattern such as data/{{000..009}}.tar")
    per_part = [(part, _part_urls(part, split)) for part in parts]
    for part, urls in per_part:
        if not any(Path(u).is_file() for u in urls):
            raise DataError(f"{part!r} matches no existing shard file (looked for {urls[0]}"
                            f"{' and more' if len(urls) > 1 else ''}); check the path or brace pattern")  # fmt: skip
    if weights is None:
        return [ShardSet(spec, tuple(u for _, urls in per_part for u in urls))]
    check_weights(weights, len(parts))
    return [ShardSet(part, tuple(urls), float(w)) for (part, urls), w in zip(per_part, weights)]


def check_weights(weights: Sequence[float], n_parts: int) -> None:
    """One non-negative weight per ``::`` part, not all zero (streamed or in-memory mixing)."""
    if len(weights) != n_parts:
        raise DataError(f"data.train_weights has {len(weights)} weight(s) but data.train has {n_parts} "
                        "'::'-separated source(s); give one weight per source")  # fmt: skip
    if any(not isinstance(w, (int, float)) or w < 0 for w in weights) or not sum(weights) > 0:
        raise DataError(f"data.train_weights {list(weights)} must be non-negative numbers, not all zero")


def _part_urls(part: str, split: str) -> list[str]:
    path = Path(part)
    if path.is_dir():
        shards = _manifest_shards(path, split)
        return shards if shards is not None else sorted(str(p) for p in path.glob("*.tar"))
    from braceexpand import braceexpand  # a dependency of webdataset

    return list(braceexpand(part))


def _manifest_shards(path: Path, split: str) -> list[str] | None:
    from ..datasets.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest is None:
        return None
    shards = manifest.shard_paths(split)
    if not shards:
        raise DataError(f"the {manifest.name} data set in {path} has no {split!r} samples; "
                        f"its splits hold {manifest.counts}")  # fmt: skip
    return shards


def should_stream(spec: str, stream: bool | None, weights: Sequence[float] | None, resampled: bool,
                  split: str = "train") -> bool:  # fmt: skip
    """The automatic choice (see the module docstring), or the configured one."""
    shards = is_shard_source(spec, split)
    if stream is True and not shards:
        raise DataError(f"data.stream=true reads WebDataset shards, and {spec!r} is not shards; write shards "
                        "with `clipforge data shards SRC --out DIR`, or set data.stream=false")  # fmt: skip
    if stream is not None:
        if stream is False and resampled:
            raise DataError("data.resampled needs streaming; remove it or set data.stream=null")
        return stream
    if not shards:
        return False
    if resampled:
        return True
    urls = [u for s in shard_sets(spec, None, split) for u in s.urls]
    return sum(os.path.getsize(u) for u in urls if os.path.isfile(u)) > STREAM_ABOVE_BYTES


def known_size(sources: Sequence[ShardSet]) -> int | None:
    """Samples in all shards, from the counts written beside them: ``sizes.json`` (open_clip's
    ``{"shard.tar": n}``, written by ``clipforge data shards``) or img2dataset's per-shard
    ``*_stats.json`` (``successes``). None when a shard's count is not known."""
    total, cache = 0, {}
    for url in (u for s in sources for u in s.urls):
        path = Path(url)
        sizes = cache.setdefault(path.parent, _sizes_file(path.parent))
        n = sizes.get(path.name)
        if n is None:
            n = _stats_count(path.with_name(path.name.rsplit(".tar", 1)[0] + "_stats.json"))
        if n is None:
            return None
        total += n
    return total


def _sizes_file(folder: Path) -> dict[str, int]:
    try:
        data = json.loads((folder / "sizes.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _stats_count(path: Path) -> int | None:
    try:
        stats = json.loads(path.read_text())
        return int(stats["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
