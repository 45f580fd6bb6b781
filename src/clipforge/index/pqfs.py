"""The pqfs kind: every vector's 4-bit PQ code scanned, the best candidates re-ranked exactly.

It is for collections without clusters for IVF to exploit (uniform-like data), where IVF would
have to probe so many lists that it reads more bytes than these codes; choose.py's ``build``
says when it is picked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SearchIndexError
from .ann import AnnIndex, training_sample

__all__ = ["PQScanIndex", "PQ_DIMS_PER_CODE", "PQ_TRAIN", "COMPACT_FRACTION", "RERANK_BYTES"]

# 4-bit codes for pairs of dimensions: 2 bits per dimension, 128 B per 512-d vector. Measured on
# 1M uniform 512-d vectors for recall@10 0.95: 1 bit per dimension (PQ128x4 fast scan, RaBitQ)
# needs ~500 re-ranked candidates per result, 2 bits ~16-32.
PQ_DIMS_PER_CODE = 2
PQ_TRAIN = 20_000  # 16 centroids per 2-d subspace: thousands of points are plenty for k-means
COMPACT_FRACTION = 0.1  # tombstones beyond this fraction of rows: rebuild the codes without them
RERANK_BYTES = 1 << 26  # gathered candidate vectors per re-rank chunk (64 MiB)
_NO_SCORE = -np.finfo(np.float32).max  # what FAISS returns beside id -1 for inner product


@dataclass
class PQScanIndex(AnnIndex):
    """Scans the 4-bit PQ code of every vector (FAISS fast scan: the codes of a block of
    vectors are looked up in SIMD registers), then scores the best ``k * nprobe`` candidates
    exactly against the float vectors. Exhaustive, so it needs no structure in the data.

    ``index`` (IndexIDMap2 over IndexFlatIP) holds the exact vectors and the ids; ``fast``
    (IndexPQFastScan) holds the codes of the same rows in the same order. Fast scan cannot
    remove codes or honour an IDSelector, so deletion leaves a tombstone (``dead``) that search
    skips by over-fetching; beyond ``COMPACT_FRACTION`` dead rows, and before saving, both are
    rebuilt without them.
    """

    fast: object = None  # faiss.IndexPQFastScan
    dead: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (rows,)
    row_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (rows,)

    kind = "pqfs"

    @classmethod
    def new(cls, dim: int, train: np.ndarray | None = None, nlist: int | None = None) -> "PQScanIndex":
        import faiss

        train = cls._training(train)
        m = dim // PQ_DIMS_PER_CODE if dim % PQ_DIMS_PER_CODE == 0 else dim
        fast = faiss.IndexPQFastScan(dim, m, 4, faiss.METRIC_INNER_PRODUCT)
        fast.pq.cp.seed = 1234  # reproducible k-means
        fast.train(training_sample(train, PQ_TRAIN))
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), nprobe=16, fast=fast)

    @classmethod
    def from_file(cls, index: object, reader: object, nprobe: int) -> "PQScanIndex":
        """The exact part was just read; the PQ codes of the same rows follow it."""
        import faiss

        fast = faiss.read_index(reader)
        if not isinstance(fast, faiss.IndexPQFastScan) or fast.ntotal != index.ntotal:
            raise SearchIndexError("the PQ codes do not match the vectors; the index will be rebuilt")
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        return cls(index, nprobe=nprobe, fast=fast, dead=np.zeros(len(ids), dtype=bool), row_ids=ids)

    @property
    def ntotal(self) -> int:
        return len(self.row_ids) - int(self.dead.sum())

    def max_effort(self, k: int) -> int:
        return max(1, -(-len(self.row_ids) // k))  # k * effort >= rows: every vector re-ranked

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(ids):
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            super().add(vectors, ids)
            self.fast.add(vectors)  # rows stay aligned: both append
            self.row_ids = np.concatenate([self.row_ids, np.asarray(ids, dtype=np.int64)])
            self.dead = np.concatenate([self.dead, np.zeros(len(ids), dtype=bool)])

    def remove(self, ids: np.ndarray) -> int:
        rows = np.flatnonzero(np.isin(self.row_ids, ids) & ~self.dead)
        self.dead[rows] = True
        if self.dead.sum() > COMPACT_FRACTION * len(self.dead):
            self.compact()
        return len(rows)

    def compact(self) -> None:
        """Drop the tombstoned rows from the vectors and rebuild the codes (~5 s per 1M)."""
        if self.dead.any():
            super().remove(self.row_ids[self.dead])  # IndexFlat keeps the order of the rest
            self.row_ids, self.dead = self.row_ids[~self.dead], np.zeros(int((~self.dead).sum()), dtype=bool)
            self.fast.reset()
            vectors = self._vectors()  # (rows, dim)
            for start in range(0, len(vectors), 65536):
                self.fast.add(vectors[start : start + 65536])

    def ids(self) -> np.ndarray:
        return self.row_ids[~self.dead]

    def _vectors(self) -> np.ndarray:
        """(rows, dim) view of the exact vectors (no copy; invalid after add or compact)."""
        import faiss

        flat = faiss.downcast_index(self.index.index)
        return faiss.rev_swig_ptr(flat.get_xb(), len(self.row_ids) * self.dim).reshape(-1, self.dim)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(q, dim) -> scores (q, k), ids (q, k); id -1 marks 'no more results'."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        want = min(k, self.ntotal if allowed is None else len(allowed))
        if want == 0:
            return np.full((len(queries), k), _NO_SCORE, dtype=np.float32), np.full((len(queries), k), -1, dtype=np.int64)
        fetch = k * int(nprobe or self.nprobe)
        while True:  # tombstones and filters take candidate places: fetch more until k remain
            rows = self._candidates(queries, fetch, allowed)  # (q, fetch) rows, -1 where none
            if fetch >= len(self.row_ids) or ((rows >= 0).sum(1) >= want).all():
                return self._rerank(queries, rows, k)
            fetch *= 4

    def _candidates(self, queries: np.ndarray, fetch: int, allowed: np.ndarray | None) -> np.ndarray:
        rows = self.fast.search(queries, max(1, min(fetch, len(self.row_ids))))[1]  # (q, fetch)
        ok = rows >= 0
        ok[ok] = ~self.dead[rows[ok]]
        if allowed is not None:
            ok[ok] = np.isin(self.row_ids[rows[ok]], allowed)
        return np.where(ok, rows, -1)

    def _rerank(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of the candidate rows -> the best k: scores (q, k), ids (q, k)."""
        vectors = self._vectors()  # (rows, dim)
        scores = np.full((len(queries), k), _NO_SCORE, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        step = max(1, RERANK_BYTES // max(1, rows.shape[1] * self.dim * 4))  # queries per chunk
        for s in range(0, len(queries), step):
            cand = rows[s : s + step]  # (b, fetch)
            exact = _exact_scores(vectors, cand, queries[s : s + step])  # (b, fetch)
            exact[cand < 0] = -np.inf
            top = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # (b, <=k)
            found = np.take_along_axis(cand, top, 1)
            n = top.shape[1]
            scores[s : s + step, :n] = np.where(found >= 0, np.take_along_axis(exact, top, 1), _NO_SCORE)
            ids[s : s + step, :n] = np.where(found >= 0, self.row_ids[np.maximum(found, 0)], -1)
        return scores, ids

    def _write(self, f) -> None:
        import faiss

        self.compact()  # the file holds no tombstones: rows of both parts match one to one
        super()._write(f)
        faiss.write_index(self.fast, faiss.PyCallbackIOWriter(f.write))


def _exact_scores(vectors: np.ndarray, cand: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(rows, dim) vectors, (b, fetch) candidate rows, (b, dim) queries -> (b, fetch) scores."""
    if cand.shape[1] * vectors.shape[1] * 4 <= RERANK_BYTES:
        return np.einsum("bfd,bd->bf", vectors[np.maximum(cand, 0)], queries)
    # Too many candidates to gather (an exhaustive fallback): score every row instead.
    return np.stack([(vectors @ q)[np.maximum(c, 0)] for c, q in zip(cand, queries)])
