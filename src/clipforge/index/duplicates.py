"""Which images of a batch are new: exact duplicates (same SHA-256 as a stored item) are
skipped, and, given a cosine threshold, near duplicates of a stored item or of an image kept
earlier in the same batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .ann import AnnIndex
from .metadata import MetadataDB
from .records import ImageRecord

__all__ = ["AddResult", "select_new"]


@dataclass
class AddResult:
    ids: list[int] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)  # path -> id of the same bytes
    near_duplicates: dict[str, tuple[int, float]] = field(default_factory=dict)  # path -> (id, cosine)

    def merge(self, other: "AddResult") -> None:
        self.ids += other.ids
        self.duplicates.update(other.duplicates)
        self.near_duplicates.update(other.near_duplicates)


def select_new(
    db: MetadataDB, ann: AnnIndex, records: Sequence[ImageRecord], vectors: np.ndarray, threshold: float | None,
    result: AddResult,
) -> list[int]:
    """Positions of the records to keep; each skipped one is noted in ``result``."""
    keep: list[int] = []
    for i, rec in enumerate(records):
        same = db.id_of_sha256(rec.sha256)
        if same is not None:
            result.duplicates[rec.path] = same
            continue
        if threshold is not None:
            near = _nearest(ann, vectors[i], vectors[keep])
            if near is not None and near[1] >= threshold:
                result.near_duplicates[rec.path] = near
                continue
        keep.append(i)
    return keep


def _nearest(ann: AnnIndex, vector: np.ndarray, pending: np.ndarray) -> tuple[int, float] | None:
    """Nearest stored item -> (id, cosine); an image pending in this batch gives id -1."""
    best: tuple[int, float] | None = None
    if ann.ntotal:
        scores, ids = ann.search(vector[None], 1)
        if ids[0, 0] >= 0:
            best = (int(ids[0, 0]), float(scores[0, 0]))
    if len(pending):
        sim = float((pending @ vector).max())
        if best is None or sim > best[1]:
            best = (-1, sim)
    return best
