"""The ANN layer on its own: the pqfs kind (exhaustive PQ fast scan + exact re-rank) reaches its
recall against exact search on fresh queries, honours deletes (tombstones, compaction) and
filters, survives save/load; ``build`` picks pqfs only where IVF cannot reach the target."""

from __future__ import annotations

import hashlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from clipforge.index import IndexStore
from clipforge.index.calibration import exact_top_k, recall_at_k
from clipforge.index.choose import build, load_index, new_index
from clipforge.index.pqfs import PQScanIndex
from clipforge.index.records import ImageRecord


def sphere(n: int, dim: int, seed: int) -> np.ndarray:
    """Uniform on the unit sphere: no clusters, the worst case for IVF."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5k stored vectors with sparse ids (not row numbers), 200 fresh queries, 64-d."""
    return sphere(5000, 64, 0), np.arange(1, 5001, dtype=np.int64) * 3, sphere(200, 64, 1)


@pytest.fixture()
def pqfs(data) -> PQScanIndex:
    vectors, ids, _ = data
    ann, recall = build(vectors, ids, "pqfs")
    assert isinstance(ann, PQScanIndex) and recall >= 0.97
    return ann


def truth_ids(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    return ids[exact_top_k(vectors, queries, k)]  # (q, k)


def test_pqfs_recall_vs_exact_on_fresh_queries(pqfs, data) -> None:
    vectors, ids, queries = data
    scores, found = pqfs.search(queries, 10)
    assert recall_at_k(found, truth_ids(vectors, ids, queries)) >= 0.95
    exact = np.einsum("qkd,qd->qk", vectors[np.searchsorted(ids, found)], queries)  # re-ranked: exact scores
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()
    # at the largest effort every vector is re-ranked: the search is exact
    full = pqfs.search(queries[:20], 10, nprobe=pqfs.max_effort(10))[1]
    assert (full == truth_ids(vectors, ids, queries[:20])).all()


def test_pqfs_exhaustive_rerank_without_gathering(pqfs, data, monkeypatch) -> None:
    from clipforge.index import pqfs as pqfs_module

    vectors, ids, queries = data
    monkeypatch.setattr(pqfs_module, "RERANK_BYTES", 1024)  # too small to gather: every row is scored
    found = pqfs.search(queries[:5], 10, nprobe=pqfs.max_effort(10))[1]
    assert (found == truth_ids(vectors, ids, queries[:5])).all()


def test_empty_pqfs_returns_no_results(data) -> None:
    vectors, _, queries = data
    empty = new_index("pqfs", 64, train=vectors)
    found = empty.search(queries[:3], 10)[1]
    assert found.shape == (3, 10) and (found == -1).all() and empty.ntotal == 0


def test_pqfs_deletes_by_tombstone_then_compacts(pqfs, data) -> None:
    vectors, ids, queries = data
    gone = truth_ids(vectors, ids, queries[:50], 1)[:, 0]  # each query's best match
    gone = np.unique(gone)
    assert pqfs.remove(gone) == len(gone) and pqfs.remove(gone) == 0  # the second time: none left
    assert pqfs.ntotal == 5000 - len(gone) and pqfs.dead.sum() == len(gone)  # tombstones, not yet compacted
    assert not np.isin(pqfs.ids(), gone).any()
    found = pqfs.search(queries[:50], 10, nprobe=pqfs.max_effort(10))[1]
    keep = ~np.isin(ids, gone)
    assert (found == truth_ids(vectors[keep], ids[keep], queries[:50])).all()  # exact among the living
    # beyond 10% dead the rows are rebuilt without them
    many = ids[: 600]
    pqfs.remove(many)
    assert pqfs.dead.sum() == 0 and pqfs.fast.ntotal == pqfs.index.ntotal == pqfs.ntotal
    assert not np.isin(pqfs.search(queries, 10)[1], np.concatenate([gone, many])).any()
    pqfs.add(vectors[:600], ids[:600])  # re-added after compaction: found again
    assert pqfs.ntotal == 5000 - len(np.setdiff1d(gone, many))
    assert recall_at_k(pqfs.search(queries, 10)[1], truth_ids(vectors[keep], ids[keep], queries)) >= 0.95


def test_pqfs_filters_give_k_allowed_results(pqfs, data) -> None:
    _, ids, queries = data
    for allowed in (ids[::2], ids[:30], ids[[7, 4000]]):  # wide, narrow, fewer than k
        found = pqfs.search(queries[:10], 10, allowed=allowed)[1]
        assert np.isin(found[found >= 0], allowed).all()
        assert ((found >= 0).sum(1) == min(10, len(allowed))).all()


def test_pqfs_save_load_round_trip(pqfs, data, tmp_path: Path) -> None:
    _, ids, queries = data
    pqfs.remove(ids[:5])  # tombstones are compacted into the file
    path = tmp_path / "vectors.faiss"
    pqfs.save(path)
    loaded = load_index(path, nprobe=pqfs.nprobe)
    assert isinstance(loaded, PQScanIndex) and loaded.kind == "pqfs" and loaded.nprobe == pqfs.nprobe
    assert (loaded.ids() == pqfs.ids()).all() and loaded.dead.sum() == 0
    for a, b in zip(loaded.search(queries, 10), pqfs.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    assert isinstance(faiss.read_index(str(path)), faiss.IndexIDMap2)  # a plain reader sees the exact part
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.faiss"]  # no temp file left


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_other_kinds_round_trip(data, tmp_path: Path, kind: str) -> None:
    vectors, ids, queries = data
    ann, _ = build(vectors, ids, kind)
    ann.save(tmp_path / "x.faiss")
    loaded = load_index(tmp_path / "x.faiss", nprobe=ann.nprobe)
    assert type(loaded) is type(ann) and loaded.kind == kind
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], ann.search(queries, 10)[1])


def test_build_switches_to_pqfs_only_where_ivf_fails() -> None:
    uniform = sphere(60_000, 64, 2)
    ann, recall = build(uniform, np.arange(60_000), "auto")
    assert ann.kind == "pqfs" and recall >= 0.97
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((64, 64)).astype(np.float32)
    clustered = centres[rng.integers(0, 64, 60_000)] + 0.35 * rng.standard_normal((60_000, 64)).astype(np.float32)
    clustered /= np.linalg.norm(clustered, axis=1, keepdims=True)
    ann, recall = build(clustered, np.arange(60_000), "auto")
    assert ann.kind == "ivf" and recall >= 0.97


def test_store_with_pqfs_adds_deletes_and_reopens(tmp_path: Path) -> None:
    vectors, queries = sphere(3000, 32, 4), sphere(20, 32, 5)
    store = IndexStore.create(tmp_path / "ix", model_ref="synthetic", model_config={"embed_dim": 32}, kind="pqfs")
    records = [ImageRecord(f"v{i}", f"f{i % 3}", hashlib.sha256(str(i).encode()).hexdigest(), 1, 1, 1) for i in range(3000)]
    with store:
        store.add(records, vectors)
        assert store.optimize() and store.ann.kind == "pqfs"
        best = store.search(queries[0], 1)[0][0]
        store.delete([best])
        assert best not in [i for i, _ in store.search(queries[0], 10)]
        store.flush()
    with IndexStore.open(tmp_path / "ix") as store:
        assert store.ann.kind == "pqfs" and store.ann.ntotal == 2999
        hits = store.search(queries[0], 10)
        assert len(hits) == 10 and best not in [i for i, _ in hits]
