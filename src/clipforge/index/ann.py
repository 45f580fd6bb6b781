"""The FAISS index: exact inner product for small collections, IVF beyond, behind ``IndexIDMap2``
so ids are the SQLite row ids (stable, deletable).

Why IVF and not HNSW for large collections: FAISS's HNSW cannot remove vectors, and the index
must support ``delete`` without a rebuild; IVF removes by id and honours ``IDSelector`` filters.
``nprobe`` is not guessed: ``calibrate_nprobe`` measures recall@10 against exact search on
queries drawn near the stored vectors and takes the smallest value that reaches the target.

The FAISS file is a cache of the vectors kept in SQLite (see store.py), so it is always
rebuildable; it is written to a temporary file, fsynced, and renamed over the old one.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import IndexError_

__all__ = ["Kind", "IVF_THRESHOLD", "choose_kind", "nlist_for", "AnnIndex", "calibrate_nprobe", "exact_top_k"]

Kind = Literal["flat", "ivf"]
# Below this, exact search of every vector takes a few ms per query: no approximation needed.
IVF_THRESHOLD = 50_000
TARGET_RECALL = 0.95
# Calibration aims higher than the target: its queries are a sample, real ones differ a little.
CALIBRATION_RECALL = 0.97


def choose_kind(n: int, requested: str = "auto") -> Kind:
    if requested == "auto":
        return "flat" if n < IVF_THRESHOLD else "ivf"
    if requested not in ("flat", "ivf"):
        raise IndexError_(f"unknown index kind {requested!r}; choose auto, flat or ivf")
    return requested  # type: ignore[return-value]


def nlist_for(n: int) -> int:
    """~4*sqrt(n) inverted lists (FAISS's guideline), a power of two, with >= 39 training points each."""
    target = max(16, min(65536, 4 * math.isqrt(max(n, 1))))
    nlist = 1 << round(math.log2(target))
    while nlist > 16 and nlist * 39 > n:
        nlist //= 2
    return nlist


@dataclass
class AnnIndex:
    index: object  # faiss.IndexIDMap2
    kind: Kind
    nprobe: int = 1

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nlist(self) -> int:
        return int(self._ivf().nlist) if self.kind == "ivf" else 0

    def _ivf(self):
        import faiss

        return faiss.extract_index_ivf(self.index.index)

    @classmethod
    def empty(cls, dim: int, kind: Kind = "flat", train: np.ndarray | None = None, nlist: int | None = None) -> "AnnIndex":
        """A new index; ``train`` (n, dim) vectors are required for IVF (k-means on them)."""
        import faiss

        if kind == "flat":
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), "flat")
        if train is None or len(train) == 0:
            raise IndexError_("an IVF index needs training vectors; use kind='flat' for an empty index")
        nlist = min(nlist or nlist_for(len(train)), len(train))  # k-means needs >= 1 point per list
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = 1234  # reproducible k-means
        ivf.train(_sample(train, nlist * 64))  # (samples, dim); 64 per centroid is plenty for k-means
        return cls(faiss.IndexIDMap2(ivf), "ivf", nprobe=min(16, nlist))

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        import faiss

        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))))

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(q, dim) -> scores (q, k), ids (q, k); id -1 marks 'no more results'."""
        import faiss

        sel = None if allowed is None else faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=int(nprobe or self.nprobe))
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries, int(k), params=params)

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same folder, fsync, rename over ``path``."""
        import faiss

        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path, nprobe: int = 1) -> "AnnIndex":
        import faiss

        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexIDMap2):
            raise IndexError_(f"{path} is not an IndexIDMap2; it will be rebuilt from the metadata")
        inner = faiss.downcast_index(index.index)
        kind: Kind = "ivf" if isinstance(inner, faiss.IndexIVF) else "flat"
        return cls(index, kind, nprobe=nprobe)


def _sample(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if len(vectors) <= n:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.random.default_rng(seed).choice(len(vectors), n, replace=False)
    return np.ascontiguousarray(vectors[np.sort(rows)], dtype=np.float32)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions (q, k) of the exact top-k inner products (FAISS flat, multithreaded)."""
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def calibration_queries(vectors: np.ndarray, n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """-> (queries (n, dim), row of the stored vector each query is, or -1).

    Half are stored vectors, scored leave-one-out (their own row is dropped from both answers):
    exactly a fresh query from the collection's own distribution. Half are midpoints of random
    pairs, which fall between clusters, where IVF is weakest, as text queries often do.
    """
    rng = np.random.default_rng(seed)
    half = max(1, n // 2)
    own = rng.choice(len(vectors), min(half, len(vectors)), replace=False)
    a = vectors[rng.integers(0, len(vectors), half)]
    b = vectors[rng.integers(0, len(vectors), half)]
    mid = a + b
    mid /= np.maximum(np.linalg.norm(mid, axis=1, keepdims=True), 1e-12)
    queries = np.concatenate([vectors[own], mid]).astype(np.float32)
    return queries, np.concatenate([own, np.full(half, -1)])


def _drop_own(found: np.ndarray, own: np.ndarray, k: int) -> list[list[int]]:
    """(q, k+1) ids -> q lists of k ids, without each query's own id (-1: none)."""
    return [[i for i in row if i != o or o < 0][:k] for row, o in zip(found.tolist(), own.tolist())]


def recall_at_k(found, truth) -> float:
    """Mean fraction of the true top-k found: q rows of ids each (arrays or lists)."""
    hits = sum(len(set(np.asarray(f).tolist()) & set(np.asarray(t).tolist()) - {-1}) for f, t in zip(found, truth))
    return float(hits / sum(len(t) for t in truth))


def calibrate_nprobe(
    ann: AnnIndex, vectors: np.ndarray, ids: np.ndarray, target: float = CALIBRATION_RECALL, k: int = 10, n_queries: int = 400
) -> tuple[int, float]:
    """Smallest power-of-two nprobe with recall@k >= target vs exact search -> (nprobe, recall)."""
    if ann.kind != "ivf":
        return 1, 1.0
    queries, own_rows = calibration_queries(vectors, n_queries)
    own = np.where(own_rows >= 0, ids[np.maximum(own_rows, 0)], -1)  # stored id of each query, or -1
    truth = _drop_own(ids[exact_top_k(vectors, queries, k + 1)], own, k)  # (q, k) stored ids
    nprobe, recall = 1, 0.0
    while nprobe <= ann.nlist:
        recall = recall_at_k(_drop_own(ann.search(queries, k + 1, nprobe=nprobe)[1], own, k), truth)
        if recall >= target:
            break
        nprobe *= 2
    ann.nprobe = min(nprobe, ann.nlist)
    return ann.nprobe, recall
