"""Micro-batching: concurrent requests are grouped, answers are each request's own, a failing
request fails alone; the searcher's batched path returns what the one-at-a-time path returns."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from clipforge.serve.batching import MicroBatcher, batch_concurrent_queries
from clipforge.index.search import Query, open_searcher


class GatedSquare:
    """Squares numbers; the first batch waits at a gate so the others queue up behind it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, xs: list[int]) -> list[int]:
        if not self.sizes:
            self.gate.wait(10)
        self.sizes.append(len(xs))
        if any(x < 0 for x in xs):
            raise ValueError("negative")
        return [x * x for x in xs]


@contextmanager
def gated_batcher(**kwargs) -> Iterator[tuple[MicroBatcher, GatedSquare]]:
    run = GatedSquare()
    batcher = MicroBatcher(run, **kwargs)
    try:
        yield batcher, run
    finally:
        batcher.close()


def _submit_behind_gate(batcher: MicroBatcher, run: GatedSquare, values: list[int]) -> list:
    with ThreadPoolExecutor(len(values) + 1) as pool:
        first = pool.submit(batcher, 1000)
        while not run.sizes and batcher.requests == 0:  # the first batch has been taken
            threading.Event().wait(0.005)
        futures = [pool.submit(batcher, v) for v in values]
        while batcher._queue.qsize() < len(values):  # all queued behind the gate
            threading.Event().wait(0.005)
        run.gate.set()
        assert first.result() == 1000 * 1000
        return [f.exception() or f.result() for f in futures]


def test_requests_queued_during_a_batch_run_together_with_their_own_answers() -> None:
    with gated_batcher(max_batch=64) as (batcher, run):
        values = list(range(20))
        assert _submit_behind_gate(batcher, run, values) == [v * v for v in values]
        assert run.sizes == [1, 20]
        assert (batcher.batches, batcher.requests) == (2, 21)
        assert batcher(7) == 49  # idle again: a lone request runs alone
        assert run.sizes[-1] == 1


def test_max_batch_splits_a_long_queue() -> None:
    with gated_batcher(max_batch=8) as (batcher, run):
        values = list(range(20))
        assert _submit_behind_gate(batcher, run, values) == [v * v for v in values]
        assert run.sizes == [1, 8, 8, 4]


def test_a_failing_request_fails_alone() -> None:
    with gated_batcher() as (batcher, run):
        out = _submit_behind_gate(batcher, run, [2, -1, 3])
        assert out[0] == 4 and out[2] == 9
        assert isinstance(out[1], ValueError)


def test_bad_max_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda xs: xs, max_batch=0)


def test_search_many_equals_one_search_per_query(built_index: Path) -> None:
    searcher = open_searcher(built_index)
    try:
        store = searcher.store
        queries = store.vectors([1, 4, 9, 16]) + 0.05  # (4, dim), not stored points
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for k in (1, 5, 1000):
            many = store.search_many(queries, k)
            for q, hits in zip(queries, many):
                one = store.search(q, k)
                assert [i for i, _ in hits] == [i for i, _ in one]
                np.testing.assert_allclose([s for _, s in hits], [s for _, s in one], atol=1e-6)
    finally:
        searcher.close()


def test_batched_service_queries_answer_as_one_at_a_time(built_index: Path) -> None:
    texts = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "star")]
    searcher = open_searcher(built_index)
    try:
        alone = {t: searcher.embedder.text(t) for t in texts}
        by_item = {i: [r.item.id for r in searcher.search(Query(image_id=i), k=5)] for i in (2, 3, 5, 8)}
        searcher.embedder._cache.clear()  # so the batched run embeds the texts again
        batchers = batch_concurrent_queries(searcher, max_batch=16)
        with ThreadPoolExecutor(12) as pool:
            got = dict(zip(texts, pool.map(lambda t: searcher.search(Query(text=t), k=5), texts)))
            items = dict(zip(by_item, pool.map(lambda i: searcher.search(Query(image_id=i), k=5), by_item)))
        assert batchers.searches.requests == len(texts) + len(items)
        assert batchers.texts.requests == len(texts)
        for t in texts:  # the text tower ran in batches: the same embedding, to bf16's precision
            vector = searcher.embedder.text(t)  # cached from the batched run
            assert float(vector @ alone[t]) > 0.999
            one = searcher.store.search(vector, 5)  # and the batched index search returns the single one's hits
            assert [(r.item.id, pytest.approx(r.score, abs=1e-6)) for r in got[t]] == [(i, s) for i, s in one]
        assert {i: [r.item.id for r in rs] for i, rs in items.items()} == by_item
    finally:
        searcher.close()
