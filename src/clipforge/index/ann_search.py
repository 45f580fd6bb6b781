"""Search of an ANN index that is exact about filters: when at least k items are allowed, k
come back, best first, whatever the kind.

A small allowed subset is scored exactly from its stored vectors; otherwise the index searches
with a selector and, when its probed IVF lists held fewer than k allowed items, looks wider,
and as a last resort scores every allowed vector exactly.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .ann import AnnIndex

__all__ = ["Hits", "VectorsOf", "search_one", "search_batch", "exact_search"]

Hits = list[tuple[int, float]]  # (id, cosine), best first
VectorsOf = Callable[[Sequence[int]], np.ndarray]  # ids -> (len(ids), dim) stored vectors


def search_one(
    ann: AnnIndex, query: np.ndarray, k: int, allowed: np.ndarray | None, vectors_of: VectorsOf, exact_subset: int
) -> Hits:
    """(dim,) normalised query -> up to k hits among ``allowed`` ids (None: all), exact when at
    most ``exact_subset`` are allowed."""
    available = ann.ntotal if allowed is None else len(allowed)
    want = min(k, available)
    if want == 0:
        return []
    if not ann.exact and allowed is not None and len(allowed) <= exact_subset:
        return exact_search(query, want, allowed, vectors_of)
    return _widening(ann, query, want, allowed, vectors_of)


def search_batch(ann: AnnIndex, queries: np.ndarray, k: int, vectors_of: VectorsOf) -> list[Hits]:
    """(q, dim) normalised queries, no filter -> per query what ``search_one`` returns, in one
    FAISS call (a batch reads the index once: the service's micro-batcher uses this)."""
    want = min(k, ann.ntotal)
    if want == 0:
        return [[] for _ in queries]
    scores, ids = ann.search(queries, want)  # (q, want) each
    out = []
    for query, row_ids, row_scores in zip(queries, ids, scores):
        hits = _hits(row_ids, row_scores)
        out.append(hits if len(hits) >= want else _widening(ann, query, want, None, vectors_of))  # rare: IVF widens
    return out


def exact_search(query: np.ndarray, k: int, ids: np.ndarray, vectors_of: VectorsOf) -> Hits:
    """The k best of these ids by exact inner product with their stored vectors."""
    vectors = vectors_of(ids)  # (n, dim)
    scores = vectors @ query  # (n,)
    top = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in top]


def _widening(ann: AnnIndex, query: np.ndarray, k: int, allowed: np.ndarray | None, vectors_of: VectorsOf) -> Hits:
    nprobe = ann.nprobe
    while True:
        scores, ids = ann.search(query[None], k, allowed, nprobe=nprobe)
        hits = _hits(ids[0], scores[0])
        if len(hits) >= k or ann.exact or nprobe >= ann.nlist:
            break
        nprobe *= 4  # the probed lists held fewer than k allowed items: look wider
    if len(hits) < k:  # cannot happen for flat; for IVF a last, exact resort
        return exact_search(query, k, allowed if allowed is not None else ann.ids(), vectors_of)
    return hits


def _hits(ids: np.ndarray, scores: np.ndarray) -> Hits:
    """One FAISS result row -> (id, score) pairs; id -1 marks 'no more results'."""
    return [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0]
