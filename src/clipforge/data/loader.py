"""Batches of (images, tokens) for training: deterministic order for a given seed, epoch and
world size; each rank its own disjoint slice; resumable at any batch; bad samples skipped and
counted, never fatal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from PIL import Image

from ..errors import DataError
from .sources import Item

__all__ = ["CaptionedImages", "epoch_batches", "make_loader", "Batch"]

_MAX_SKIP = 16  # a run of this many unreadable samples in a row is a broken data set


@dataclass
class Batch:
    images: torch.Tensor  # (batch, 3, H, W)
    tokens: torch.Tensor  # (batch, context_length)
    skipped: list[str]  # keys of unreadable samples replaced in this batch


class CaptionedImages(torch.utils.data.Dataset):
    """Item i -> (image tensor, one caption) with the caption drawn from (seed, epoch, i)."""

    def __init__(self, items: list[Item], preprocess: Callable[[Image.Image], torch.Tensor], seed: int = 0) -> None:
        self.items, self.preprocess, self.seed = items, preprocess, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, list[str]]:
        skipped: list[str] = []
        for offset in range(_MAX_SKIP):
            # A bad sample is replaced by the next one, so batches keep their size (needed for
            # gathering across processes) and the order stays deterministic.
            item = self.items[(index + offset) % len(self.items)]
            captions = [c for c in item.captions if c.strip()]
            if not captions:
                skipped.append(f"{item.key} (no caption)")
                continue
            try:
                # Augmentation draws from a generator seeded by (seed, epoch, index): the same
                # sample gets the same crop after a resume, whatever the worker or process.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
                    image = self.preprocess(item.open_image())
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                skipped.append(f"{item.key} ({type(e).__name__})")
                continue
            caption = random.Random(hash((self.seed, self.epoch, index))).choice(captions)
            return image, caption, skipped
        raise DataError(f"{_MAX_SKIP} unreadable samples in a row from index {index}; check the data set")


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  concepts: list[str | None] | None = None) -> list[list[int]]:  # fmt: skip
    """This rank's batches of one epoch: a seeded permutation cut into global batches of
    ``batch_size * world_size`` (the last partial one dropped), each split between ranks.

    With ``concepts``, batches are built so one concept appears at most once per global batch
    where possible: two skin tones of one emoji in a batch would be false negatives.
    """
    global_batch = batch_size * world_size
    if global_batch > n:
        raise DataError(f"the global batch size {global_batch} is larger than the data set ({n} samples)")
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if concepts is not None:
        order = _spread_concepts(order, concepts, global_batch)
    batches = [order[i : i + global_batch] for i in range(0, n - global_batch + 1, global_batch)]
    return [b[rank * batch_size : (rank + 1) * batch_size] for b in batches]


def _spread_concepts(order: list[int], concepts: list[str | None], global_batch: int) -> list[int]:
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


def _collate(tokenize: Callable[[list[str]], torch.Tensor]):
    def collate(samples: list[tuple[torch.Tensor, str, list[str]]]) -> Batch:
        images = torch.stack([s[0] for s in samples])
        tokens = tokenize([s[1] for s in samples])
        return Batch(images, tokens, [k for s in samples for k in s[2]])

    return collate


def make_loader(items: list[Item], preprocess: Callable[[Image.Image], torch.Tensor],
                tokenize: Callable[[list[str]], torch.Tensor], batch_size: int, *, seed: int = 0,
                epoch: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0, start_batch: int = 0,
                spread_concepts: bool = False) -> Iterator[Batch]:  # fmt: skip
    """Batches of one epoch from ``start_batch`` on (earlier ones are never decoded)."""
    dataset = CaptionedImages(items, preprocess, seed)
    dataset.epoch = epoch
    concepts = [it.concept for it in items] if spread_concepts else None
    batches = epoch_batches(len(items), batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                            concepts=concepts)[start_batch:]  # fmt: skip
    return iter(torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate(tokenize),
        persistent_workers=False,
    ))  # fmt: skip


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    return n // (batch_size * world_size)
