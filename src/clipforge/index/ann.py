"""The FAISS index: exact inner product for small collections, IVF beyond, and an exhaustive
4-bit PQ scan with exact re-ranking ("pqfs") where IVF finds no structure to exploit. Ids are
the SQLite row ids (stable, deletable).

Why IVF and not HNSW for large collections: FAISS's HNSW cannot remove vectors, and the index
must support ``delete`` without a rebuild; IVF removes by id and honours ``IDSelector`` filters.
HNSW also loses on unstructured data: on 100k uniform 512-d vectors (M=32) it needs efSearch
2048, ~10 ms/query, for recall@10 0.95: slower than exact search (bench/search_scale.py --explore).
The search effort (``nprobe``) is not guessed: ``calibrate_nprobe`` measures recall@10 against
exact search on queries drawn near the stored vectors and takes the smallest value that reaches
the target. When IVF would have to probe more than 1/16 of its lists, it scans more bytes than
the PQ codes of every vector (128 B vs 2 KB per 512-d vector), so ``build`` switches to pqfs.

The FAISS file is a cache of the vectors kept in SQLite (see store.py), so it is always
rebuildable; it is written to a temporary file, fsynced, and renamed over the old one.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import SearchIndexError

__all__ = [
    "Kind", "KINDS", "IVF_THRESHOLD", "choose_kind", "nlist_for", "AnnIndex", "PQScanIndex", "build",
    "calibrate_nprobe", "exact_top_k", "recall_at_k",
]  # fmt: skip

Kind = Literal["flat", "ivf", "pqfs"]
KINDS = ("flat", "ivf", "pqfs")
# Below this, exact search of every vector takes a few ms per query: no approximation needed.
IVF_THRESHOLD = 50_000
TARGET_RECALL = 0.95
# Calibration aims higher than the target: its queries are a sample, real ones differ a little.
CALIBRATION_RECALL = 0.97
# IVF-Flat probing nlist/16 lists reads 2 KB/16 = 128 B per 512-d vector, as much as pqfs reads
# for all of them; measured at 1M uniform vectors: 6.8 ms (IVF nprobe 256/4096) vs ~6 ms (pqfs).
IVF_GIVES_UP = 16


def choose_kind(n: int, requested: str = "auto") -> Kind:
    """The kind by size (``build`` may still trade an unreachable IVF for pqfs)."""
    if requested == "auto":
        return "flat" if n < IVF_THRESHOLD else "ivf"
    if requested not in KINDS:
        raise SearchIndexError(f"unknown index kind {requested!r}; choose auto, {', '.join(KINDS)}")
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
    nprobe: int = 1  # search effort: IVF lists probed; pqfs candidates re-ranked per result

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nlist(self) -> int:
        return int(self._ivf().nlist) if self.kind == "ivf" else 0

    def max_effort(self, k: int) -> int:
        """The effort at which the search is exhaustive."""
        return self.nlist if self.kind == "ivf" else 1

    def _ivf(self):
        import faiss

        return faiss.extract_index_ivf(self.index.index)

    @classmethod
    def empty(cls, dim: int, kind: Kind = "flat", train: np.ndarray | None = None, nlist: int | None = None) -> "AnnIndex":
        """A new index; ``train`` (n, dim) vectors are required for IVF (k-means) and pqfs (PQ)."""
        import faiss

        if kind == "flat":
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), "flat")
        if train is None or len(train) == 0:
            raise SearchIndexError(f"a {kind} index needs training vectors; use kind='flat' for an empty index")
        if kind == "pqfs":
            return PQScanIndex.trained(dim, train)
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
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:
                self._write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _write(self, f) -> None:
        import faiss

        faiss.write_index(self.index, faiss.PyCallbackIOWriter(f.write))

    @classmethod
    def load(cls, path: Path, nprobe: int = 1) -> "AnnIndex":
        """Read an index file: one IndexIDMap2, followed by the PQ codes for pqfs."""
        import faiss

        with open(path, "rb") as f:
            reader = faiss.PyCallbackIOReader(f.read)
            index = faiss.read_index(reader)
            if not isinstance(index, faiss.IndexIDMap2):
                raise SearchIndexError(f"{path} is not an IndexIDMap2; it will be rebuilt from the metadata")
            if f.tell() < os.fstat(f.fileno()).st_size:  # PQ codes follow: a pqfs index
                return PQScanIndex.from_parts(index, faiss.read_index(reader), nprobe)
        inner = faiss.downcast_index(index.index)
        kind: Kind = "ivf" if isinstance(inner, faiss.IndexIVF) else "flat"
        return cls(index, kind, nprobe=nprobe)


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

    @classmethod
    def trained(cls, dim: int, train: np.ndarray) -> "PQScanIndex":
        import faiss

        m = dim // PQ_DIMS_PER_CODE if dim % PQ_DIMS_PER_CODE == 0 else dim
        fast = faiss.IndexPQFastScan(dim, m, 4, faiss.METRIC_INNER_PRODUCT)
        fast.pq.cp.seed = 1234  # reproducible k-means
        fast.train(_sample(train, PQ_TRAIN))
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), "pqfs", nprobe=16, fast=fast)

    @classmethod
    def from_parts(cls, index, fast, nprobe: int) -> "PQScanIndex":
        import faiss

        if not isinstance(fast, faiss.IndexPQFastScan) or fast.ntotal != index.ntotal:
            raise SearchIndexError("the PQ codes do not match the vectors; the index will be rebuilt")
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        return cls(index, "pqfs", nprobe=nprobe, fast=fast, dead=np.zeros(len(ids), dtype=bool), row_ids=ids)

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


def _calibration_set(vectors: np.ndarray, ids: np.ndarray, k: int, n_queries: int):
    """-> queries (q, dim), stored id of each query or -1 (q,), true top-k ids without it (q lists)."""
    queries, own_rows = calibration_queries(vectors, n_queries)
    own = np.where(own_rows >= 0, ids[np.maximum(own_rows, 0)], -1)
    return queries, own, _drop_own(ids[exact_top_k(vectors, queries, k + 1)], own, k)


def calibrate_nprobe(
    ann: AnnIndex, vectors: np.ndarray, ids: np.ndarray, target: float = CALIBRATION_RECALL, k: int = 10,
    n_queries: int = 400, limit: int | None = None, calibration=None,
) -> tuple[int, float]:
    """Smallest power-of-two search effort (IVF: nprobe; pqfs: candidates re-ranked per result)
    with recall@k >= target vs exact search -> (effort, recall). Without success by ``limit``,
    the effort is left at ``limit``; without a limit, at exhaustive search."""
    if ann.kind == "flat":
        return 1, 1.0
    queries, own, truth = calibration or _calibration_set(vectors, ids, k, n_queries)
    top = min(limit or ann.max_effort(k + 1), ann.max_effort(k + 1))
    effort, recall = 1, 0.0
    while True:
        effort = min(effort, top)
        recall = recall_at_k(_drop_own(ann.search(queries, k + 1, nprobe=effort)[1], own, k), truth)
        if recall >= target or effort >= top:
            break
        effort *= 2
    ann.nprobe = effort
    return effort, recall


def build(vectors: np.ndarray, ids: np.ndarray, requested: str = "auto") -> tuple[AnnIndex, float]:
    """The index for (n, dim) vectors with these ids, its effort calibrated -> (index, recall).

    Under "auto", a large collection gets IVF unless calibration finds IVF must probe more than
    1/IVF_GIVES_UP of its lists (data without clusters, e.g. uniform on the sphere): then pqfs.
    """
    kind = choose_kind(len(ids), requested)
    ann = AnnIndex.empty(vectors.shape[1], kind, train=vectors)
    ann.add(vectors, ids)
    if kind == "flat":
        return ann, 1.0
    calibration = _calibration_set(vectors, ids, 10, 400)
    limit = max(1, ann.nlist // IVF_GIVES_UP) if requested == "auto" else None
    _, recall = calibrate_nprobe(ann, vectors, ids, limit=limit, calibration=calibration)
    if recall < CALIBRATION_RECALL and limit is not None:
        del ann  # free the IVF copy of the vectors before building the next
        ann = AnnIndex.empty(vectors.shape[1], "pqfs", train=vectors)
        ann.add(vectors, ids)
        _, recall = calibrate_nprobe(ann, vectors, ids, calibration=calibration)
    return ann, recall
