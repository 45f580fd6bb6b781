"""Batches of (images, tokens) for training.

- Deterministic: the order is a permutation seeded by (seed, epoch); the caption drawn for a
  sample and its augmentation are seeded by (seed, epoch, index), so neither depends on the
  number of DataLoader workers or on where a run was resumed.
- Distributed: each global batch (``batch_size * world_size``) is cut into one contiguous slice
  per rank, so ranks see disjoint samples and the union is the single-process batch.
- Resumable: ``start_batch=k`` starts at batch k of the epoch; earlier images are not decoded.
- Robust: an unreadable image or a sample without captions is replaced by another sample
  (so every batch keeps its size, which gathering across ranks needs) and reported in
  ``Batch.skipped``; ``SkipCounter`` totals them for the training log.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from ..errors import DataError
from .batch import Batch, Skipped, SkipCounter, mix_seed, prepare_sample, skip_reason
from .items import Item
from .sources import Source, load_items

__all__ = ["Batch", "Skipped", "SkipCounter", "CaptionedImages", "epoch_batches", "batches_per_epoch",
           "make_loader"]  # fmt: skip

# Tries per sample before the data set counts as broken. With a fraction f of bad samples the
# chance of 64 misses in a row is f**64: about 1e-6 even at f = 0.8.
_MAX_TRIES = 64


class CaptionedImages(torch.utils.data.Dataset):
    """Item i -> (image tensor, one caption, skipped samples, key, source), drawn from (seed, epoch, i)."""

    def __init__(self, items: Sequence[Item], preprocess: Callable[[Image.Image], torch.Tensor], seed: int = 0,
                 epoch: int = 0) -> None:  # fmt: skip
        self.items, self.preprocess, self.seed, self.epoch = items, preprocess, seed, epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, list[Skipped], str, str]:
        sample_seed = mix_seed(self.seed, self.epoch, index)
        probe = random.Random(sample_seed)
        skipped: list[Skipped] = []
        candidate = index
        for _ in range(_MAX_TRIES):
            item = self.items[candidate]
            image = self._read(item, skipped)
            if image is not None:
                tensor, caption = prepare_sample(image, item.captions, sample_seed, self.preprocess)
                return tensor, caption, skipped, item.key, item.source
            # A replacement drawn at random rather than the next item: bad files often sit
            # together (a missing folder), and a random jump leaves such a run at once.
            candidate = probe.randrange(len(self.items))
        shown = "; ".join(map(str, skipped[:5]))
        raise DataError(f"{_MAX_TRIES} samples in a row could not be used ({shown}; ...): most of the data set is "
                        "unreadable or uncaptioned; check the paths and files")  # fmt: skip

    @staticmethod
    def _read(item: Item, skipped: list[Skipped]) -> Image.Image | None:
        if not any(c.strip() for c in item.captions):
            skipped.append(Skipped(item.key, "no caption"))
            return None
        try:
            return item.open_image()
        except Exception as e:  # noqa: BLE001  any undecodable file (PIL raises many types)
            skipped.append(Skipped(item.key, skip_reason(e)))
            return None


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  concepts: Sequence[str | None] | None = None, drop_last: bool = True) -> list[list[int]]:  # fmt: skip
    """This rank's batches (item indices) of one epoch.

    A seeded permutation is cut into global batches of ``batch_size * world_size``, each split
    into one slice per rank. The last partial global batch is dropped, or with
    ``drop_last=False`` topped up from the start of the order so every rank gets the same
    number of samples (as torch's DistributedSampler pads).

    With ``concepts``, one concept appears at most once per global batch where possible: two
    skin tones of one emoji in a batch would be false negatives for the contrastive loss.
    """
    _check_batching(n, batch_size, rank, world_size)
    global_batch = batch_size * world_size
    g = torch.Generator().manual_seed(mix_seed(seed, epoch) % 2**63)
    order = torch.randperm(n, generator=g).tolist()
    if concepts is not None:
        order = _spread_concepts(order, concepts, global_batch)
    batches = [order[i : i + global_batch] for i in range(0, n, global_batch)]
    if len(batches[-1]) < global_batch:
        if drop_last:
            batches.pop()
        else:
            last = batches[-1]
            per_rank = -(-len(last) // world_size)  # ceil
            batches[-1] = (last + order)[: per_rank * world_size]
            return [b[rank * batch_size : (rank + 1) * batch_size] for b in batches[:-1]] + [
                batches[-1][rank * per_rank : (rank + 1) * per_rank]
            ]
    return [b[rank * batch_size : (rank + 1) * batch_size] for b in batches]


def _check_batching(n: int, batch_size: int, rank: int, world_size: int) -> None:
    if n == 0:
        raise DataError("the data set is empty: there is nothing to batch")
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"bad batching: batch_size={batch_size}, rank={rank}, world_size={world_size}")
    if batch_size * world_size > n:
        raise DataError(f"the global batch size {batch_size * world_size} (batch {batch_size} × {world_size} "
                        f"process(es)) is larger than the data set ({n} samples); "
                        "lower the batch size or add data")  # fmt: skip


def _spread_concepts(order: list[int], concepts: Sequence[str | None], global_batch: int) -> list[int]:
    """Greedy: fill each batch with samples whose concept it does not hold yet; leftovers go to
    later batches. Deterministic given ``order``."""
    pending, out = list(order), []
    while pending:
        batch, seen, rest = [], set(), []
        for i in pending:
            c = concepts[i]
            if len(batch) < global_batch and (c is None or c not in seen):
                batch.append(i)
                seen.add(c)
            else:
                rest.append(i)
        if len(batch) < global_batch:  # not enough distinct concepts left: allow repeats
            fill = rest[: global_batch - len(batch)]
            batch += fill
            rest = rest[len(fill) :]
        out += batch
        pending = rest
    return out


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
    global_batch = batch_size * world_size
    return n // global_batch if drop_last else -(-n // global_batch)


class _Collate:
    """Stacks images and tokenizes captions (a class, so spawned workers can receive it)."""

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenize = tokenize

    def __call__(self, samples: list[tuple[torch.Tensor, str, list[Skipped], str, str]]) -> Batch:
        images = torch.stack([s[0] for s in samples])  # (batch, 3, H, W)
        tokens = self.tokenize([s[1] for s in samples])  # (batch, context_length)
        sources = dict(Counter(s[4] for s in samples if s[4]))  # mixed sources only (data/mixture.py)
        return Batch(images, tokens, [k for s in samples for k in s[2]], [s[3] for s in samples], sources)


def make_loader(source: Sequence[Item] | Source | str | Path, preprocess: Callable[[Image.Image], torch.Tensor],
                tokenize: Callable[[list[str]], torch.Tensor], batch_size: int, *, seed: int = 0, epoch: int = 0,
                rank: int = 0, world_size: int = 1, workers: int = 0, start_batch: int = 0, drop_last: bool = True,
                spread_concepts: bool = False, pin_memory: bool = False) -> torch.utils.data.DataLoader:  # fmt: skip
    """A DataLoader over this rank's batches of one epoch, from batch ``start_batch`` on.

    ``source``: items (``load_items``), an opened ``Source``, or a source string. ``preprocess``
    maps a PIL image to (3, H, W); ``tokenize`` maps a list of captions to (B, L) token ids.
    Iterating gives ``Batch``es (``images, tokens = batch`` works too).
    """
    items = _as_items(source)
    concepts = [it.concept for it in items] if spread_concepts else None
    batches = epoch_batches(len(items), batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                            concepts=concepts, drop_last=drop_last)  # fmt: skip
    if not 0 <= start_batch <= len(batches):
        raise DataError(f"start_batch {start_batch} is outside this epoch's {len(batches)} batches")
    return torch.utils.data.DataLoader(
        CaptionedImages(items, preprocess, seed, epoch), batch_sampler=batches[start_batch:], num_workers=workers,
        collate_fn=_Collate(tokenize), pin_memory=pin_memory,
    )  # fmt: skip


def _as_items(source: Sequence[Item] | Source | str | Path) -> Sequence[Item]:
    if isinstance(source, Source):
        return source.items
    if isinstance(source, (str, Path)):
        return load_items(source)
    return source
