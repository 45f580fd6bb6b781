"""The training data of a run, in memory or streamed (``data/shard_sets.py`` says which is
chosen), behind one interface the loop uses: batches per epoch, and a loader that continues
from the position a checkpoint saved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from ..data import Item, load_items, make_loader
from ..data.loader import batches_per_epoch
from ..data.mixture import MixedSource, concept_filter, mix_epoch, mixed_sources
from ..data.shard_sets import ShardSet, known_size, shard_sets, should_stream
from ..data.stream import StreamSpec, make_stream_loader
from ..distributed import DistInfo
from ..errors import DataError, TrainingError
from .config import RunConfig
from .state import TrainState

__all__ = ["TrainingData", "InMemoryData", "StreamedData", "open_training_data"]

Preprocess = Callable[[Image.Image], torch.Tensor]
Tokenize = Callable[[list[str]], torch.Tensor]


@dataclass
class InMemoryData:
    """Every item in memory, a seeded permutation per epoch (``data/loader.py``); with
    ``mixture``, each epoch's items are composed from several sources by weight
    (``data/mixture.py``), ``data.epoch_samples`` of them (default: all sources' items)."""

    items: Sequence[Item]
    config: RunConfig
    dist: DistInfo
    mixture: list[MixedSource] | None = None
    streaming = False

    def __post_init__(self) -> None:
        t = self.config.train
        if self.batches_per_epoch() == 0:
            raise DataError(f"the batch size {t.batch_size} × {self.dist.world_size} process(es) is larger than the "
                            f"data set ({self.epoch_size()} samples); lower train.batch_size or add data")  # fmt: skip

    def epoch_size(self) -> int:
        if self.mixture is None:
            return len(self.items)
        return self.config.data.epoch_samples or sum(len(s.items) for s in self.mixture)

    def epoch_items(self, epoch: int) -> Sequence[Item]:
        if self.mixture is None:
            return self.items
        return mix_epoch(self.mixture, self.config.train.seed, epoch, self.epoch_size())

    def batches_per_epoch(self) -> int:
        return batches_per_epoch(self.epoch_size(), self.config.train.batch_size, self.dist.world_size)

    def loader(self, state: TrainState, preprocess: Preprocess, tokenize: Tokenize) -> torch.utils.data.DataLoader:
        t, d = self.config.train, self.config.data
        return make_loader(self.epoch_items(state.epoch), preprocess, tokenize, t.batch_size, seed=t.seed,
                           epoch=state.epoch, rank=self.dist.rank, world_size=self.dist.world_size,
                           workers=d.workers, start_batch=state.batch, spread_concepts=d.spread_concepts)  # fmt: skip


@dataclass
class StreamedData:
    """Shards streamed per rank and worker (``data/stream.py``)."""

    sources: list[ShardSet]
    config: RunConfig
    dist: DistInfo
    streaming = True

    def __post_init__(self) -> None:
        d, slots = self.config.data, self.dist.world_size * max(1, self.config.data.workers)
        most = max(len(s.urls) for s in self.sources)
        if not d.resampled and most < slots:
            raise DataError(f"{most} shard(s) for {self.dist.world_size} process(es) × {max(1, d.workers)} "
                            "worker(s): some would read nothing; use fewer data.workers, smaller shards "
                            "(clipforge data shards --shard-size), or data.resampled=true")  # fmt: skip
        if d.resampled and self.batches_per_epoch() is None:
            raise DataError("data.resampled=true draws shards forever: set data.epoch_samples, or keep a sizes.json "
                            "beside the shards (clipforge data shards writes one)")  # fmt: skip

    def batches_per_epoch(self) -> int | None:
        """Per rank; None when the epoch runs until the shards end and their size is unknown."""
        d, t = self.config.data, self.config.train
        samples = d.epoch_samples or known_size(self.sources)
        return None if samples is None else samples // (t.batch_size * self.dist.world_size)

    def spec(self, epoch: int) -> StreamSpec:
        d, t = self.config.data, self.config.train
        # Without epoch_samples a non-resampled epoch ends with the data, not at a count.
        per_epoch = self.batches_per_epoch() if (d.epoch_samples or d.resampled) else None
        return StreamSpec(tuple(self.sources), t.batch_size, t.seed, epoch, self.dist.rank, self.dist.world_size,
                          d.workers, d.shuffle_buffer, d.resampled, per_epoch)  # fmt: skip

    def loader(self, state: TrainState, preprocess: Preprocess, tokenize: Tokenize) -> torch.utils.data.DataLoader:
        spec = self.spec(state.epoch)
        saved = len(state.stream.get("workers") or [])
        if saved and saved != spec.streams:
            raise TrainingError(f"the checkpoint's data stream has {saved} worker(s) and this run has "
                                f"data.workers={self.config.data.workers}: resume with data.workers={saved if saved > 1 else 0} "
                                "(each worker reads its own shards)")  # fmt: skip
        return make_stream_loader(spec, preprocess, tokenize, position=state.stream)


TrainingData = InMemoryData | StreamedData


def open_training_data(config: RunConfig, dist: DistInfo) -> TrainingData:
    """The run's training data, streamed or in memory as ``data.stream`` (or the size) says."""
    d = config.data
    if should_stream(d.train, d.stream, d.train_weights, d.resampled):
        if d.exclude_concepts is not None:
            raise DataError("data.exclude_concepts filters in-memory sources; set data.stream=false, or filter "
                            "the shards when writing them")  # fmt: skip
        return StreamedData(shard_sets(d.train, d.train_weights), config, dist)
    if d.train_weights is None and d.exclude_concepts is None:
        return InMemoryData(load_items(d.train, d.image_key, d.caption_key), config, dist)
    parts = [(part, load_items(part, d.image_key, d.caption_key)) for part in d.train.split("::") if part]
    if d.exclude_concepts is not None:
        parts = _exclude_concepts(parts, Path(d.exclude_concepts))
    mixture = mixed_sources(parts, d.train_weights or [1.0] * len(parts))
    return InMemoryData([it for s in mixture for it in s.items], config, dist, mixture)


def _exclude_concepts(parts: list[tuple[str, list[Item]]], dataset: Path) -> list[tuple[str, list[Item]]]:
    from ..datasets.manifest import read_manifest

    manifest = read_manifest(dataset)
    if manifest is None:
        raise DataError(f"data.exclude_concepts: {dataset} holds no built data set (no manifest.json); "
                        "give a folder written by clipforge data build")  # fmt: skip
    names_one = concept_filter(c for split in ("heldout", "val") for c in manifest.concepts.get(split, []))
    same = dataset.resolve()
    # The data set's own splits are concept-disjoint already; the filter is for the others.
    return [(name, items if Path(name).resolve() == same else [it for it in items if not names_one(it)])
            for name, items in parts]  # fmt: skip
