"""The training data of a run, in memory or streamed (``data/shard_sets.py`` says which is
chosen), behind one interface the loop uses: batches per epoch, and a loader that continues
from the position a checkpoint saved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image

from ..data import Item, load_items, make_loader
from ..data.loader import batches_per_epoch
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
    """Every item in memory, a seeded permutation per epoch (``data/loader.py``)."""

    items: Sequence[Item]
    config: RunConfig
    dist: DistInfo
    streaming = False

    def __post_init__(self) -> None:
        t = self.config.train
        if self.batches_per_epoch() == 0:
            raise DataError(f"the batch size {t.batch_size} × {self.dist.world_size} process(es) is larger than the "
                            f"data set ({len(self.items)} samples); lower train.batch_size or add data")  # fmt: skip

    def batches_per_epoch(self) -> int:
        return batches_per_epoch(len(self.items), self.config.train.batch_size, self.dist.world_size)

    def loader(self, state: TrainState, preprocess: Preprocess, tokenize: Tokenize) -> torch.utils.data.DataLoader:
        t, d = self.config.train, self.config.data
        return make_loader(self.items, preprocess, tokenize, t.batch_size, seed=t.seed, epoch=state.epoch,
                           rank=self.dist.rank, world_size=self.dist.world_size, workers=d.workers,
                           start_batch=state.batch, spread_concepts=d.spread_concepts)  # fmt: skip


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
        return StreamedData(shard_sets(d.train, d.train_weights), config, dist)
    return InMemoryData(load_items(d.train, d.image_key, d.caption_key), config, dist)
