"""Which ANN kind an index gets (and when to rebuild it), and the one table from kind names to classes.

By size: exact search (flat) below ``IVF_THRESHOLD`` vectors, IVF beyond. IVF's effort is
calibrated (calibration.py); when IVF would have to probe more than 1/16 of its lists, it scans
more bytes than the PQ codes of every vector (128 B vs 2 KB per 512-d vector), so ``build``
switches to pqfs.

An index whose vectors stay on disk (built from embeddings) gets the compressed kind, ivfpq,
beyond ``IVF_THRESHOLD`` instead: the others hold a float copy of every vector in RAM, ivfpq only
PQ codes (compressed.py; the store builds it, streamed from the shards).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import SearchIndexError
from .ann import AnnIndex, FlatIndex, IVFIndex, Kind
from .calibration import CALIBRATION_RECALL, calibrate_nprobe, calibration_set
from .compressed import CompressedIndex, lookup_in
from .pqfs import PQScanIndex

__all__ = [
    "INDEX_CLASSES", "KINDS", "IVF_THRESHOLD", "IVF_GIVES_UP", "RETRAIN_GROWTH", "choose_kind", "needs_rebuild",
    "new_index", "load_index", "build",
]  # fmt: skip

INDEX_CLASSES: dict[str, type[AnnIndex]] = {"flat": FlatIndex, "ivf": IVFIndex, "pqfs": PQScanIndex, "ivfpq": CompressedIndex}
KINDS = tuple(INDEX_CLASSES)
# Below this, exact search of every vector takes a few ms per query: no approximation needed.
IVF_THRESHOLD = 50_000
# IVF-Flat probing nlist/16 lists reads 2 KB/16 = 128 B per 512-d vector, as much as pqfs reads
# for all of them; measured at 1M uniform vectors: 6.8 ms (IVF nprobe 256/4096) vs ~6 ms (pqfs).
IVF_GIVES_UP = 16
# Rebuild (retrain) a trained index when the collection has grown this much since training.
RETRAIN_GROWTH = 4.0


def choose_kind(n: int, requested: str = "auto", on_disk: bool = False) -> Kind:
    """The kind by size (``build`` may still trade an unreachable IVF for pqfs); ``on_disk``:
    the vectors stay in shard files, and RAM holds only compressed codes beyond the threshold."""
    if requested == "auto":
        return "flat" if n < IVF_THRESHOLD else ("ivfpq" if on_disk else "ivf")
    if requested not in KINDS:
        raise SearchIndexError(f"unknown index kind {requested!r}; choose auto, {', '.join(KINDS)}")
    return requested  # type: ignore[return-value]


def needs_rebuild(n: int, requested: str, current: str, trained_on: int, on_disk: bool = False) -> bool:
    """Whether an index of kind ``current``, trained on ``trained_on`` vectors, should be rebuilt
    for n: the size calls for another kind, or a trained (IVF, pqfs, ivfpq) index outgrew its
    training (for ivfpq, the vectors it was built over)."""
    want = choose_kind(n, requested, on_disk)
    same = want == current or (want, current) == ("ivf", "pqfs")  # build's own choice
    return not same or (want != "flat" and n > RETRAIN_GROWTH * max(trained_on, 1))


def new_index(kind: str, dim: int, train: np.ndarray | None = None, nlist: int | None = None) -> AnnIndex:
    """A new, empty index; ``train`` (n, dim) vectors are required for IVF (k-means) and pqfs (PQ)."""
    if kind not in INDEX_CLASSES:
        raise SearchIndexError(f"unknown index kind {kind!r}; choose {', '.join(KINDS)}")
    return INDEX_CLASSES[kind].new(dim, train, nlist)


def load_index(path: Path, nprobe: int = 1) -> AnnIndex:
    """Read an index file: one IndexIDMap2, followed by the PQ codes for pqfs; or for ivfpq,
    the compressed IVF index, which holds its ids itself."""
    import faiss

    with open(path, "rb") as f:
        reader = faiss.PyCallbackIOReader(f.read)
        index = faiss.read_index(reader)
        if CompressedIndex.holds(index):
            return CompressedIndex.from_file(index, reader, nprobe)
        if not isinstance(index, faiss.IndexIDMap2):
            raise SearchIndexError(f"{path} is not an IndexIDMap2; it will be rebuilt from the metadata")
        if f.tell() < os.fstat(f.fileno()).st_size:  # PQ codes follow: a pqfs index
            kind = "pqfs"
        else:
            kind = "ivf" if isinstance(faiss.downcast_index(index.index), faiss.IndexIVF) else "flat"
        return INDEX_CLASSES[kind].from_file(index, reader, nprobe)


def build(vectors: np.ndarray, ids: np.ndarray, requested: str = "auto") -> tuple[AnnIndex, float]:
    """The index for (n, dim) vectors with these ids, its effort calibrated -> (index, recall).

    Under "auto", a large collection gets IVF unless calibration finds IVF must probe more than
    1/IVF_GIVES_UP of its lists (data without clusters, e.g. uniform on the sphere): then pqfs.
    """
    ann = _filled(choose_kind(len(ids), requested), vectors, ids)
    if ann.exact:
        return ann, 1.0
    calibration = calibration_set(vectors, ids, 10, 400)
    limit = max(1, ann.nlist // IVF_GIVES_UP) if requested == "auto" else None
    _, recall = calibrate_nprobe(ann, vectors, ids, limit=limit, calibration=calibration)
    if recall < CALIBRATION_RECALL and limit is not None:
        del ann  # free the IVF copy of the vectors before building the next
        ann = _filled("pqfs", vectors, ids)
        _, recall = calibrate_nprobe(ann, vectors, ids, calibration=calibration)
    return ann, recall


def _filled(kind: str, vectors: np.ndarray, ids: np.ndarray) -> AnnIndex:
    """A new index of this kind, trained on and holding the (n, dim) vectors."""
    ann = new_index(kind, vectors.shape[1], train=vectors)
    if isinstance(ann, CompressedIndex):
        ann.vectors_of = lookup_in(vectors, ids)  # re-ranked from the vectors given
    ann.add(vectors, ids)
    return ann
