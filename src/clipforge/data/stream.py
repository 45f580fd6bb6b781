"""Training batches streamed from WebDataset shards at constant memory, resumable mid-epoch.

Each rank runs ``streams = max(1, workers)`` streams, one per DataLoader worker; stream ``w`` of
rank ``r`` is slot ``r * streams + w`` of ``world_size * streams``.

- Shards: per epoch and per source, a seeded permutation of the shards is dealt to the slots
  (shard ``i`` of the permutation to slot ``i % slots``): no two slots read one shard. With
  ``resampled=True`` each slot instead draws shards with replacement, forever (open_clip's
  ``--dataset-resampled``), and the epoch length in samples ends the epoch.
- Samples: read one shard at a time through the webdataset library, mixed across sources by
  weight, through a shuffle buffer of ``shuffle_buffer`` samples (the only samples held).
- Batches: a stream decodes and augments its own samples into whole batches (an undecodable
  image is skipped and the next sample taken, so every batch keeps its size).
- Exact resume: a stream's state is plain data (per-source shard cursor, the buffer as
  references to (source, shard, index), its random generator, counters); every batch carries
  the state after it, the training loop keeps the state of the batches it consumed, and a
  resumed stream re-reads only the shards its buffer refers to. DataLoader hands out the
  workers' batches round-robin, so the loop also keeps which worker comes next and the resumed
  loader starts there (``next_worker``).
- Damage is counted, never fatal: a missing shard, an unreadable or truncated one, a sample
  without image or caption, an undecodable image each reach the next batch's ``skipped``.
  At the end of its data a stream yields one empty batch carrying what it left out (the
  partial last batch among it), so those counts survive a resume too.

The order depends on ``(seed, epoch, world_size, workers)`` but not on timing.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import torch
from PIL import Image

from .. import wds
from ..errors import DataError
from ..images import decode_image
from .batch import Batch, Skipped, mix_seed, prepare_sample, skip_reason
from .shard_sets import ShardSet

__all__ = ["StreamSpec", "ShardStream", "StreamedBatches", "make_stream_loader", "advance_position"]

_SAMPLE, _SHARDS, _MIX = 0, 1, 2  # salts of mix_seed, one per use


@dataclass(frozen=True)
class StreamSpec:
    """Everything that fixes one rank's streamed order in one epoch (picklable for workers)."""

    sources: tuple[ShardSet, ...]
    batch_size: int
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    workers: int = 0  # DataLoader worker processes; 0 reads in the training process
    shuffle_buffer: int = 2000
    resampled: bool = False
    batches_per_epoch: int | None = None  # per rank; None: until the shards run out

    @property
    def streams(self) -> int:
        return max(1, self.workers)

    @property
    def slots(self) -> int:
        return self.world_size * self.streams

    def batches_of(self, worker: int) -> int | None:
        """This rank's batches per epoch dealt to its streams round-robin, as DataLoader asks."""
        if self.batches_per_epoch is None:
            return None
        base, extra = divmod(self.batches_per_epoch, self.streams)
        return base + int(worker < extra)


class _Record(NamedTuple):
    source: int
    shard: int  # position in this slot's shard sequence of that source
    index: int  # position of the sample in that shard
    key: str
    data: bytes
    captions: tuple[str, ...]


class ShardStream:
    """One stream (one DataLoader worker of one rank): records, then batches; ``state()`` is
    plain data that ``ShardStream(spec, worker, state)`` continues from exactly."""

    def __init__(self, spec: StreamSpec, worker: int, state: dict[str, Any] | None = None) -> None:
        self.spec, self.worker = spec, worker
        self.slot = spec.rank * spec.streams + worker
        self._orders = [self._slot_shards(i, s) for i, s in enumerate(spec.sources)]
        self._open: dict[int, tuple[int, Iterator[dict[str, Any]]]] = {}  # source -> (shard, samples)
        self._pending: list[Skipped] = []  # left out since the last batch
        if state is None:
            self.cursors = [[0, 0, False] for _ in spec.sources]  # [shard, next index, source done]
            self.rng = random.Random(mix_seed(spec.seed, spec.epoch, self.slot, _MIX))
            self.outputs = self.batches_done = 0
            self.finished = False
            self.buffer: list[_Record] = []
        else:
            self._restore(state)

    # --- which shards ---------------------------------------------------------------------
    def _slot_shards(self, source: int, shards: ShardSet) -> list[int] | None:
        """Indices into ``shards.urls`` this slot reads, in order; None when resampled (drawn)."""
        if self.spec.resampled:
            return None
        g = torch.Generator().manual_seed(mix_seed(self.spec.seed, self.spec.epoch, source, _SHARDS) % 2**63)
        order = torch.randperm(len(shards.urls), generator=g).tolist()
        return order[self.slot :: self.spec.slots]

    def _url(self, source: int, shard: int) -> str | None:
        urls = self.spec.sources[source].urls
        order = self._orders[source]
        if order is None:  # with replacement: the shard-th draw of this slot
            return urls[mix_seed(self.spec.seed, self.spec.epoch, self.slot, source, shard, _SHARDS) % len(urls)]
        return urls[order[shard]] if shard < len(order) else None

    # --- records --------------------------------------------------------------------------
    def _samples(self, source: int, shard: int, url: str, start: int) -> Iterator[dict[str, Any]]:
        """The shard's samples from index ``start``; damage ends it and is counted."""
        name = Path(url).name
        if not os.path.isfile(url):
            self._pending.append(Skipped(name, "missing shard"))
            return
        index = -1
        try:
            for index, sample in enumerate(wds.iter_samples(url)):
                if index >= start:
                    yield sample
        except Exception as e:  # noqa: BLE001  a damaged shard costs its damaged part, not the run
            self._pending.append(Skipped(f"{name} after sample {index + 1}", f"unreadable shard ({type(e).__name__})"))
            return
        if not wds.has_end_marker(url):
            self._pending.append(Skipped(f"{name} after sample {index + 1}", "truncated shard"))

    def _next_from(self, source: int) -> _Record | None:
        """The next usable record of a source, or None when it has no more (non-resampled)."""
        cursor = self.cursors[source]
        while True:
            shard, index = cursor[0], cursor[1]
            if self._open.get(source, (None,))[0] != shard:
                url = self._url(source, shard)
                if url is None:
                    cursor[2] = True
                    return None
                self._open[source] = (shard, self._samples(source, shard, url, index))
            sample = next(self._open[source][1], None)
            if sample is None:  # the shard is over: the next one
                cursor[0], cursor[1] = shard + 1, 0
                continue
            cursor[1] = index + 1
            record = self._record(source, shard, index, sample)
            if record is not None:
                return record

    def _record(self, source: int, shard: int, index: int, sample: dict[str, Any]) -> _Record | None:
        key = sample.get("__key__", f"{shard}/{index}")
        image = wds.image_key(sample)
        if image is None:
            self._pending.append(Skipped(key, "no image"))
            return None
        captions = wds.sample_fields(sample).captions
        if not captions:
            self._pending.append(Skipped(key, "no caption"))
            return None
        return _Record(source, shard, index, key, sample[image], captions)

    def _draw(self) -> _Record | None:
        """A record from a source chosen by weight among those not done; None when all are."""
        while True:
            live = [i for i, c in enumerate(self.cursors) if not c[2]]
            weights = [self.spec.sources[i].weight for i in live]
            if not live or not sum(weights) > 0:
                return None
            source = self.rng.choices(live, weights)[0] if len(live) > 1 else live[0]
            record = self._next_from(source)
            if record is not None:
                return record

    def next_record(self) -> _Record | None:
        """The next record out of the shuffle buffer (filled first); None at the end of data."""
        while len(self.buffer) < max(1, self.spec.shuffle_buffer):
            record = self._draw()
            if record is None:
                break
            self.buffer.append(record)
        if not self.buffer:
            return None
        j = self.rng.randrange(len(self.buffer))
        self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
        return self.buffer.pop()

    # --- batches --------------------------------------------------------------------------
    def batches(self, preprocess: Callable[[Image.Image], torch.Tensor],
                tokenize: Callable[[list[str]], torch.Tensor]) -> Iterator[Batch]:  # fmt: skip
        """Whole batches until the epoch's share or the data ends; then, at the end of data,
        one empty batch with what was left out."""
        cap = self.spec.batches_of(self.worker)
        while not self.finished:
            if cap is not None and self.batches_done >= cap:
                self.finished = True
                return
            samples: list[tuple[torch.Tensor, str, _Record]] = []
            while len(samples) < self.spec.batch_size:
                record = self.next_record()
                if record is None:
                    break
                seed = mix_seed(self.spec.seed, self.spec.epoch, self.slot, self.outputs, _SAMPLE)
                self.outputs += 1
                try:
                    image = decode_image(record.data)
                except Exception as e:  # noqa: BLE001  any undecodable file (PIL raises many types)
                    self._pending.append(Skipped(record.key, skip_reason(e)))
                    continue
                samples.append((*prepare_sample(image, record.captions, seed, preprocess), record))
            if len(samples) < self.spec.batch_size:  # out of data: report and stop
                self._pending += [Skipped(r.key, "partial last batch") for _, _, r in samples]
                self.finished = True
                yield Batch(torch.zeros(0), torch.zeros(0, dtype=torch.long), self._take_pending(),
                            cursor=(self.worker, self.state()))  # fmt: skip
                return
            self.batches_done += 1
            names = [self.spec.sources[r.source].name for _, _, r in samples]
            yield Batch(torch.stack([s[0] for s in samples]), tokenize([s[1] for s in samples]),  # (B, 3, H, W), (B, L)
                        self._take_pending(), [r.key for _, _, r in samples], {n: names.count(n) for n in set(names)},
                        (self.worker, self.state()))  # fmt: skip

    def _take_pending(self) -> list[Skipped]:
        taken, self._pending = self._pending, []
        return taken

    # --- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"cursors": [list(c) for c in self.cursors], "buffer": [[r.source, r.shard, r.index] for r in self.buffer],
                "rng": [version, list(internal), gauss], "outputs": self.outputs, "batches": self.batches_done,
                "finished": self.finished}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        self.cursors = [list(c) for c in state["cursors"]]
        version, internal, gauss = state["rng"]
        self.rng = random.Random()
        self.rng.setstate((version, tuple(internal), gauss))
        self.outputs, self.batches_done, self.finished = state["outputs"], state["batches"], state["finished"]
        self.buffer = self._refetch([tuple(ref) for ref in state["buffer"]])

    def _refetch(self, refs: list[tuple[int, int, int]]) -> list[_Record]:
        """The buffered records again, in buffer order: each shard they came from is read once,
        up to its last needed sample (the buffer spans the last few shards of each source)."""
        found: dict[tuple[int, int, int], _Record] = {}
        for source, shard in sorted({(s, k) for s, k, _ in refs}):
            wanted = {i for s, k, i in refs if (s, k) == (source, shard)}
            url = self._url(source, shard)
            for index, sample in enumerate(wds.iter_samples(url)) if url else ():
                if index in wanted:
                    record = self._record(source, shard, index, sample)
                    if record is not None:
                        found[(source, shard, index)] = record
                if index >= max(wanted):
                    break
        self._pending.clear()  # what _record counted while re-reading was counted the first time
        missing = [ref for ref in refs if ref not in found]
        if missing:
            raise DataError(f"resuming the data stream: {len(missing)} buffered sample(s) are no longer in their shards "
                            f"(e.g. source {missing[0][0]}, shard position {missing[0][1]}, sample {missing[0][2]}); "
                            "the shards changed since the checkpoint: restore them or start a new run")  # fmt: skip
        return [found[ref] for ref in refs]


class StreamedBatches(torch.utils.data.IterableDataset):
    """The batches of one rank's streams; DataLoader worker ``p`` runs stream
    ``(p + next_worker) % streams`` so a resumed loader hands them out in the same turn."""

    def __init__(self, spec: StreamSpec, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenize: Callable[[list[str]], torch.Tensor], states: list[dict[str, Any] | None] | None = None,
                 next_worker: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.spec, self.preprocess, self.tokenize = spec, preprocess, tokenize
        self.states = states or [None] * spec.streams
        self.next_worker = next_worker

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker = ((info.id if info is not None else 0) + self.next_worker) % self.spec.streams
        stream = ShardStream(self.spec, worker, self.states[worker])
        return stream.batches(self.preprocess, self.tokenize)


def make_stream_loader(spec: StreamSpec, preprocess: Callable[[Image.Image], torch.Tensor],
                       tokenize: Callable[[list[str]], torch.Tensor], *, position: dict[str, Any] | None = None,
                       pin_memory: bool = False) -> torch.utils.data.DataLoader:  # fmt: skip
    """A DataLoader of this rank's streamed ``Batch``es for one epoch, continuing from
    ``position`` (what ``advance_position`` kept; None or {} starts the epoch)."""
    position = position or {}
    return torch.utils.data.DataLoader(
        StreamedBatches(spec, preprocess, tokenize, position.get("workers"), position.get("next", 0)),
        batch_size=None, num_workers=spec.workers, pin_memory=pin_memory,
    )  # fmt: skip


def advance_position(position: dict[str, Any] | None, batch: Batch, streams: int) -> dict[str, Any]:
    """The loader position after consuming ``batch``: each stream's last state and the stream
    whose batch DataLoader hands out next."""
    assert batch.cursor is not None, "not a streamed batch"
    worker, state = batch.cursor
    workers = list((position or {}).get("workers") or [None] * streams)
    workers[worker] = state
    return {"workers": workers, "next": (worker + 1) % streams}
