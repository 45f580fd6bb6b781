"""The ivfpq kind: a compressed FAISS index that keeps only PQ codes and ids in RAM, its
candidates re-ranked exactly against vectors kept elsewhere (the embedding shards on disk of an index built from embeddings: vectors.py), so recall stays high while RAM holds
~72 B per 512-d vector instead of 2 KB.

The index is an IVF over 4-bit PQ fast-scan codes (``IVF{nlist},PQ{m}x4fs``), made with FAISS's
``index_factory`` and chosen, as autofaiss chooses, to fit a memory budget: the largest code
that fits half the budget, with ids. We write the factory strings ourselves rather than call
autofaiss: autofaiss 2.18 pins numpy<2 (installing it would downgrade ours, 2.3) and builds
from its own embedding reader into an index without our ids, deletes or exact re-ranking.

Measured on 1M clustered 512-d vectors (bench/search_scale.py's mixture; IVF4096, 200 fresh
queries, recall@10 against exact search): 32 B codes (PQ64x4fs) reach 0.93 with 400 candidates
re-ranked, 64 B codes (PQ128x4fs) 0.97 with 200 and 0.99 with 400; the scan itself takes
~0.2 ms. Code precision, not the lists probed, limits recall (it stops rising beyond nprobe 16),
so the budget buys code bytes first. The codes encode the vectors, not their residuals from the
list centroid (``by_residual = False``): on 300k vectors, re-ranking 40 or 320 candidates, the
recall is the same on the clustered mixture (0.98 / 1.00), and on uniform vectors, where every
list must be probed, residual codes give 0.94 at 3.5 ms per scan and plain ones 0.99 at 1.9 ms
(one lookup table per query instead of one per list). ``build_compressed`` trains on a sample, adds the vectors
chunk by chunk as they stream from disk, and computes the calibration's exact answers in the
same pass; the effort (lists probed, then candidates re-ranked per result) is calibrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..errors import SearchIndexError
from .ann import AnnIndex, id_selector
from .calibration import CALIBRATION_RECALL, TopK, calibration_queries, recall_without_own
from .memory import return_freed_memory

__all__ = [
    "DEFAULT_BUDGET", "RERANK", "RERANK_STEPS", "RERANK_BYTES", "CompressedIndex", "choose_factory", "training_size",
    "build_compressed", "rerank", "lookup_in",
]  # fmt: skip

VectorsOf = Callable[[np.ndarray], np.ndarray]  # ids (n,) -> (n, dim) float32
Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]  # -> (ids, vectors) chunks, every vector once

DEFAULT_BUDGET = 2 << 30  # bytes of RAM the index may take: codes, ids, lists, build buffers
CODE_SHARE = 0.5  # of the budget for codes + ids; the rest: training sample, chunks, re-rank
TRAIN_SHARE = 0.2  # of the budget for the training sample (float32)
ID_BYTES = 8  # each inverted list stores an int64 id per code
RERANK = 32  # candidates re-ranked per result before calibration (320 for k=10: 0.98-0.99 above)
RERANK_STEPS = (4, 8, 16, 32, 64)  # what calibration tries, cheapest first
RERANK_BYTES = 16 << 20  # candidate vectors gathered at a time (float32) when re-ranking a batch
_NO_SCORE = -np.finfo(np.float32).max  # FAISS's score beside id -1 for inner product


def choose_factory(n: int, dim: int, budget: int = DEFAULT_BUDGET) -> str:
    """The FAISS factory string for n vectors of dim under ``budget`` bytes (see the module doc).

    nlist ~ sqrt(n), a power of two: the low end of FAISS's guideline (4-16 sqrt(n)), because on
    a few cores adding 10M vectors costs n x nlist dot products, while fast-scan codes make the
    longer lists cheap to scan. m sub-quantizers of 4 bits (m/2 bytes): the most that fit."""
    nlist = max(16, min(65536, 1 << round(math.log2(max(math.sqrt(max(n, 1)), 16)))))
    while nlist > 16 and nlist * 39 > n:  # k-means wants >= 39 points per list
        nlist //= 2
    per_vector = CODE_SHARE * budget / max(n, 1) - ID_BYTES
    for m in (dim // 2, dim // 4, dim // 8, dim // 16):
        if m >= 8 and dim % m == 0 and m % 2 == 0 and m / 2 <= per_vector:
            return f"IVF{nlist},PQ{m}x4fs"
    need = n * (max(dim // 32, 4) + ID_BYTES) / CODE_SHARE
    raise SearchIndexError(f"{n:,} vectors of {dim}-d do not fit a memory budget of {budget / 2**30:.2f} GiB "
                           f"even with {max(dim // 32, 4)}-byte codes; give at least {need / 2**30:.1f} GiB")  # fmt: skip


def training_size(factory: str, n: int, dim: int, budget: int = DEFAULT_BUDGET) -> int:
    """Vectors to train on: 64 per list (k-means) and at least 65k (the PQ), within the budget."""
    nlist = int(factory.split(",")[0].removeprefix("IVF").split("_")[0])
    return int(min(n, max(64 * nlist, 65_536), TRAIN_SHARE * budget // (4 * dim)))


@dataclass
class CompressedIndex(AnnIndex):
    """``index``: a FAISS IndexIVF of fast-scan PQ codes holding the ids itself (no id map).
    ``vectors_of`` (set by the store, not saved) gives the exact vectors to re-rank with."""

    kind = "ivfpq"

    rerank: int = RERANK  # candidates re-ranked per result wanted
    vectors_of: VectorsOf | None = None

    @classmethod
    def new(cls, dim: int, train: np.ndarray | None = None, nlist: int | None = None) -> "CompressedIndex":
        train = cls._training(train)
        return cls.create(dim, train, choose_factory(len(train), dim))

    @classmethod
    def create(cls, dim: int, train: np.ndarray, factory: str) -> "CompressedIndex":
        """An empty index of this factory string, trained on the (t, dim) sample."""
        import faiss

        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = 1234  # reproducible k-means
        ivf.by_residual = False  # see the module doc: as precise after re-ranking, never worse
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        return cls(index, nprobe=min(16, ivf.nlist))

    @staticmethod
    def holds(index: object) -> bool:
        """Whether a FAISS index read from a file is one of ours (an IVF, not an id map)."""
        import faiss

        return isinstance(index, faiss.IndexIVF)  # read_index returns the most derived type

    @classmethod
    def from_file(cls, index: object, reader: object, nprobe: int) -> "CompressedIndex":
        return cls(index, nprobe=nprobe)  # not downcast again: a downcast proxy does not own the index

    @property
    def factory(self) -> str:
        import faiss

        ivf = faiss.downcast_index(faiss.extract_index_ivf(self.index))
        return f"IVF{ivf.nlist},PQ{ivf.pq.M}x{ivf.pq.nbits}fs"

    @property
    def nlist(self) -> int:
        import faiss

        return int(faiss.extract_index_ivf(self.index).nlist)

    def max_effort(self, k: int) -> int:
        return self.nlist

    def ids(self) -> np.ndarray:
        """(ntotal,) every stored id, read from the inverted lists."""
        import faiss

        lists = faiss.extract_index_ivf(self.index).invlists
        out = np.empty(self.ntotal, dtype=np.int64)  # filled in place: no per-list arrays left on the heap
        at = 0
        for i in range(lists.nlist):
            size = lists.list_size(i)
            if size:
                ptr = lists.get_ids(i)
                out[at : at + size] = faiss.rev_swig_ptr(ptr, size)
                lists.release_ids(i, ptr)
                at += size
        return out[:at]

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(q, dim) -> exact scores (q, k), ids (q, k) of the best of ``k * rerank`` candidates."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        params = faiss.SearchParametersIVF(sel=id_selector(allowed), nprobe=int(nprobe or self.nprobe))
        approx, candidates = self.index.search(queries, int(k * max(1, self.rerank)), params=params)
        if self.vectors_of is None:  # nothing to re-rank with: the codes' own scores
            return approx[:, :k], candidates[:, :k]
        return rerank(queries, candidates, k, self.vectors_of)


def rerank(queries: np.ndarray, candidates: np.ndarray, k: int, vectors_of: VectorsOf):
    """Exact inner products of (q, c) candidate ids (-1: none) -> best k: scores (q, k), ids (q, k)."""
    step = max(1, RERANK_BYTES // max(1, candidates.shape[1] * queries.shape[1] * 4))  # queries per gather
    scores = np.full((len(queries), k), _NO_SCORE, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for s in range(0, len(queries), step):
        cand = candidates[s : s + step]  # (b, c)
        valid = cand >= 0
        unique, where = np.unique(cand[valid], return_inverse=True)
        sims = vectors_of(unique) @ queries[s : s + step].T  # (u, b): each vector read once
        exact = np.full(cand.shape, -np.inf, dtype=np.float32)
        exact[valid] = sims[where, np.nonzero(valid)[0]]
        n = min(k, cand.shape[1])
        top = np.argsort(-exact, axis=1, kind="stable")[:, :n]  # (b, n)
        best = np.take_along_axis(exact, top, 1)
        found = best > -np.inf
        scores[s : s + step, :n] = np.where(found, best, _NO_SCORE)
        ids[s : s + step, :n] = np.where(found, np.take_along_axis(cand, top, 1), -1)
    return scores, ids


def lookup_in(vectors: np.ndarray, ids: np.ndarray) -> VectorsOf:
    """``vectors_of`` over (n, dim) vectors in memory and their ids."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    return lambda wanted: vectors[order[np.searchsorted(sorted_ids, wanted)]]


def build_compressed(
    n: int, dim: int, chunks: Chunks, sample: Callable[[int], tuple[np.ndarray, np.ndarray]], vectors_of: VectorsOf,
    budget: int = DEFAULT_BUDGET, target: float = CALIBRATION_RECALL, k: int = 10, n_queries: int = 400,
) -> tuple[CompressedIndex, float]:  # fmt: skip
    """An ivfpq index over the n vectors that ``chunks()`` streams, never all in RAM: trained on
    ``sample(t)`` -> (ids, vectors), filled chunk by chunk, its effort calibrated on queries
    drawn from the sample (exact answers computed in the same pass) -> (index, recall@k)."""
    factory = choose_factory(n, dim, budget)
    sample_ids, sample_vectors = sample(training_size(factory, n, dim, budget))
    ann = CompressedIndex.create(dim, sample_vectors, factory)
    queries, own_rows = calibration_queries(sample_vectors, n_queries)
    own = np.where(own_rows >= 0, sample_ids[np.maximum(own_rows, 0)], -1)
    del sample_vectors, sample_ids
    return_freed_memory()  # the sample and training's copies, before the codes grow
    truth = TopK(queries, k + 1)
    for ids, vectors in chunks():
        ann.add(vectors, ids)
        truth.update(vectors, ids)
    ann.vectors_of = vectors_of
    return ann, calibrate(ann, queries, own, truth.ids(), k, target)


def calibrate(ann: CompressedIndex, queries: np.ndarray, own: np.ndarray, truth: np.ndarray, k: int, target: float) -> float:
    """The least effort with recall@k >= target: lists probed first (with the most candidates
    re-ranked), then candidates per result -> the recall reached (at the largest effort if none)."""
    def recall(nprobe: int, rerank_factor: int) -> float:
        ann.rerank = rerank_factor
        return recall_without_own(ann.search(queries, k + 1, nprobe=nprobe)[1], own, truth, k)

    nprobe, best = 1, RERANK_STEPS[-1]
    while recall(nprobe, best) < target and nprobe < ann.nlist:
        nprobe = min(2 * nprobe, ann.nlist)
    ann.nprobe = nprobe
    for factor in RERANK_STEPS:
        reached = recall(nprobe, factor)
        if reached >= target or factor == best:
            return reached
    return reached
