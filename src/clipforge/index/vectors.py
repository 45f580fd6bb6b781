"""The vectors of one modality of an index, wherever they are kept: rows of embedding shards on
disk (an index built from embeddings: shards.py) and SQLite blobs (items added one by one).

Ids tell the two apart: a shard covers a range of ids, anything else is a blob. A deleted
item's row stays in its shard file; callers pass the ids of live items (the ANN indexes hold no
others), and ``IndexStore.vectors`` checks them for its public callers.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .metadata import MetadataDB
from .shards import CHUNK_ROWS, ShardSet

__all__ = ["VectorSet"]


class VectorSet:
    """The vectors of ``modality`` ("image" or "text"): shard rows first, then blobs."""

    def __init__(self, modality: str, db: MetadataDB, shards: ShardSet) -> None:
        self.modality, self.db, self.shards = modality, db, shards

    @property
    def on_disk(self) -> bool:
        """Whether bulk vectors live in shard files (an index built from embeddings)."""
        return len(self.shards) > 0

    def get(self, ids: np.ndarray) -> np.ndarray:
        """(n, dim) float32 vectors of these ids, in their order."""
        ids = np.asarray(ids, dtype=np.int64)
        covered = self.shards.covers(ids)
        if covered.all() and len(ids):
            return self.shards.get(ids)
        if not covered.any():
            return self.db.vectors(ids, self.modality)
        out = np.empty((len(ids), self.db.dim), dtype=np.float32)
        out[covered] = self.shards.get(ids[covered])
        out[~covered] = self.db.vectors(ids[~covered], self.modality)
        return out

    def has(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which of these ids have a vector of this modality."""
        ids = np.asarray(ids, dtype=np.int64)
        found = self.shards.covers(ids)
        if not found.all():
            found[~found] = np.isin(ids[~found], self.db.blob_ids(self.modality))
        return found

    def expected_ids(self, live: np.ndarray) -> np.ndarray:
        """Ascending ids of the live items (``live``: ascending) with a vector of this modality:
        what this modality's ANN index must hold."""
        in_shards = live[self.shards.covers(live)]
        return np.union1d(in_shards, self.db.blob_ids(self.modality))

    def chunks(self, live: np.ndarray, rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """-> (ids (c,), float32 vectors (c, dim)) of the live items (``live``: ascending ids),
        streamed: shard rows of deleted items are left out, blobs follow."""
        for ids, vectors in self.shards.chunks(rows):
            lo, hi = np.searchsorted(live, [ids[0], ids[-1] + 1])
            if hi - lo == len(ids):  # nothing deleted here: no copy
                yield ids, vectors
            elif hi > lo:
                keep = np.zeros(len(ids), dtype=bool)
                keep[live[lo:hi] - ids[0]] = True  # shard chunks are contiguous id ranges
                yield ids[keep], vectors[keep]
        yield from self.db.blob_chunks(self.modality, rows)

    def sample(self, ids: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """At most n of these ids, chosen at random (reproducible), ascending, with their vectors."""
        if len(ids) > n:
            ids = np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))
        return ids, self.get(ids)
