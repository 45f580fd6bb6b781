"""How hard an approximate index must search, measured rather than guessed.

The search effort (``nprobe``: IVF lists probed; pqfs candidates re-ranked per result) is not
guessed: ``calibrate_nprobe`` measures recall@10 against exact search on queries drawn near the
stored vectors (``calibration_queries``) and takes the smallest value that reaches the target.
"""

from __future__ import annotations

import numpy as np

from .ann import AnnIndex

__all__ = [
    "TARGET_RECALL", "CALIBRATION_RECALL", "exact_top_k", "calibration_queries", "recall_at_k",
    "calibration_set", "calibrate_nprobe", "TopK", "recall_without_own",
]  # fmt: skip

TARGET_RECALL = 0.95
# Calibration aims higher than the target: its queries are a sample, real ones differ a little.
CALIBRATION_RECALL = 0.97


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


def calibration_set(vectors: np.ndarray, ids: np.ndarray, k: int, n_queries: int):
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
    if ann.exact:
        return 1, 1.0
    queries, own, truth = calibration or calibration_set(vectors, ids, k, n_queries)
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


def recall_without_own(found: np.ndarray, own: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Recall@k of (q, k+1) found ids against (q, k+1) true ids, each query's own id (``own``,
    -1: none) dropped from both (calibration_queries: a stored vector is its own best match)."""
    return recall_at_k(_drop_own(found, own, k), _drop_own(truth, own, k))


class TopK:
    """The exact top-k ids of a few queries over vectors that arrive in chunks (streamed from
    disk: never all in RAM): ``update`` with each chunk, then ``ids``."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = np.ascontiguousarray(queries, dtype=np.float32), k
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)  # (q, <=k)
        self._ids = np.zeros((len(queries), 0), dtype=np.int64)

    def update(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Merge a chunk: (c, dim) vectors and their (c,) ids. FAISS's blocked search finds the
        chunk's own top-k without a (q, c) score matrix, then the two top-k lists merge."""
        import faiss

        if len(vectors) == 0:
            return
        n = min(self.k, len(vectors))
        scores, rows = faiss.knn(self.queries, np.ascontiguousarray(vectors, dtype=np.float32), n, metric=faiss.METRIC_INNER_PRODUCT)
        scores = np.concatenate([self.scores, scores], axis=1)  # (q, <=2k)
        merged = np.concatenate([self._ids, ids[rows]], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        self.scores, self._ids = np.take_along_axis(scores, top, 1), np.take_along_axis(merged, top, 1)

    def ids(self) -> np.ndarray:
        """(q, k) ids, best first."""
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self._ids, order, 1)
