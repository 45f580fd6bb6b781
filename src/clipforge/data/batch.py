"""What a training loader yields, and the per-sample rules both loaders share.

Every sample's caption choice and augmentation are seeded from stable integers (``mix_seed``),
so neither depends on the number of DataLoader workers, on timing, or on where a run resumed.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image

from ..errors import DataError

__all__ = ["Batch", "Skipped", "SkipCounter", "mix_seed", "skip_reason", "prepare_sample"]


class Skipped(NamedTuple):
    key: str
    reason: str  # "no caption", "missing shard", ... or the decoding exception's type name

    def __str__(self) -> str:
        return f"{self.key} ({self.reason})"


@dataclass
class Batch:
    images: torch.Tensor  # (batch, 3, H, W); (0,) for a streaming worker's end-of-data report
    tokens: torch.Tensor  # (batch, context_length)
    skipped: list[Skipped] = field(default_factory=list)  # samples left out on the way to this batch
    keys: list[str] = field(default_factory=list)  # the samples' keys, in batch order
    sources: dict[str, int] = field(default_factory=dict)  # source name -> samples in this batch
    # Streaming only: (worker, the worker's stream state after this batch); the training loop
    # keeps the state of the batches it consumed, which is what an exact resume needs.
    cursor: tuple[int, dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        # images, tokens = batch
        return iter((self.images, self.tokens))

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        return Batch(self.images.pin_memory(), self.tokens.pin_memory(), self.skipped, self.keys, self.sources,
                     self.cursor)  # fmt: skip


class SkipCounter:
    """Running totals of left-out samples, by reason: ``counter.update(batch)`` each step,
    ``counter.as_dict()`` in the log."""

    def __init__(self) -> None:
        self.by_reason: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # reason -> first key seen with it

    def update(self, skipped: Batch | Iterable[Skipped]) -> None:
        for s in skipped.skipped if isinstance(skipped, Batch) else skipped:
            self.by_reason[s.reason] += 1
            self.examples.setdefault(s.reason, s.key)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.by_reason.items()))

    def __str__(self) -> str:
        parts = [f"{n} {reason} (e.g. {self.examples[reason]})" for reason, n in sorted(self.by_reason.items())]
        return f"{self.total} samples skipped" + (": " + "; ".join(parts) if parts else "")


def mix_seed(*numbers: int) -> int:
    """A stable 63-bit seed from integers (Python's ``hash`` differs between builds)."""
    digest = hashlib.blake2b(":".join(map(str, numbers)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def skip_reason(error: Exception) -> str:
    """The reason an undecodable image is counted under: the underlying error's type
    (OSError, UnidentifiedImageError), not our DataError wrapper."""
    cause = error.__cause__ if isinstance(error, DataError) and error.__cause__ is not None else error
    return type(cause).__name__


def prepare_sample(image: Image.Image, captions: Sequence[str], seed: int,
                   preprocess: Callable[[Image.Image], torch.Tensor]) -> tuple[torch.Tensor, str]:  # fmt: skip
    """(3, H, W) tensor and one of the non-empty captions, both drawn from ``seed``."""
    caption = random.Random(seed).choice([c for c in captions if c.strip()])
    # Augmentation draws from torch's generator: seed it per sample so a resumed run, or one
    # with more workers, crops this sample the same way.
    # Only the CPU generator: torch.manual_seed would also queue seeds for every accelerator
    # backend, recording a stack trace each time (1 ms a sample, half the data worker's time).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return preprocess(image), caption
