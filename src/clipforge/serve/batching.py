"""Micro-batching for a service: requests that arrive while one batch runs are run together next.

Why: one text through the text tower, or one query through an exhaustive FAISS scan, costs
nearly as much as thirty-two at once (the weights or the codes are read from memory once per
batch, not once per request). A service whose requests come one per client therefore wins
throughput, and under load latency, by grouping them.

The batching is "natural" (as in NVIDIA Triton's dynamic batcher with no queue delay): there is
no timer, so an idle service adds only a thread hand-off to a lone request, and a busy one
groups whatever queued up while the previous batch ran. A failing batch is retried request by
request, so one bad request fails alone.

Written here rather than taken from a library: the serving frameworks that batch (Triton,
TorchServe, Ray Serve) are whole servers; this is forty lines over ``queue`` and ``Future``.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, Sequence, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..index.ann_search import Hits
    from ..index.embedder import Embedder
    from ..index.search import Searcher

__all__ = ["MicroBatcher", "QueryBatchers", "batch_concurrent_queries", "EncodeBatchers", "batch_encode_requests"]

T = TypeVar("T")
R = TypeVar("R")
_STOP = object()


class MicroBatcher(Generic[T, R]):
    """``batcher(request)`` -> ``run([request, ...])[i]``, with concurrent calls batched.

    ``run`` maps a list of requests to a list of results in the same order. It runs on one
    worker thread (started on first use, a daemon), so it needs no locking of its own.
    """

    def __init__(self, run: Callable[[list[T]], Sequence[R]], max_batch: int = 64, name: str = "micro-batcher") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._run, self.max_batch, self._name = run, max_batch, name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0  # statistics: batches run and requests served
        self.requests = 0

    def __call__(self, request: T) -> R:
        future: Future = Future()
        self._ensure_started()
        self._queue.put((request, future))
        return future.result()

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = [first], False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self.batches += 1
            self.requests += len(batch)
            self._serve(batch)
            if stop:
                return

    def _serve(self, batch: list[tuple[T, Future]]) -> None:
        try:
            results = list(self._run([request for request, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} requests")
        except BaseException as error:  # noqa: BLE001 - handed to the callers, never lost
            if len(batch) == 1:
                batch[0][1].set_exception(error)
                return
            for one in batch:  # which request failed? each alone, so only it fails
                self._serve([one])
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)


@dataclass(frozen=True)
class QueryBatchers:
    """The two batchers a service's searcher runs its concurrent queries through."""

    texts: MicroBatcher[str, np.ndarray]  # text -> (embed_dim,) vector, through the text tower
    searches: MicroBatcher[tuple[np.ndarray, int], Hits]  # unfiltered (vector, k) -> hits


def batch_concurrent_queries(searcher: Searcher, max_batch: int = 64) -> QueryBatchers:
    """Run concurrent queries in micro-batches: text embeddings through the engine together,
    unfiltered index searches in one FAISS call. Results are the same; a busy service serves
    more queries per second and an idle one waits no longer. The batchers stop when the
    searcher closes."""
    store = searcher.store
    batchers = QueryBatchers(
        MicroBatcher(searcher.embedder.texts, max_batch, "clipforge-text"),
        MicroBatcher(lambda requests: _search_group(store, requests), max_batch, "clipforge-search"),
    )
    searcher.embedder.encode_text = batchers.texts
    searcher.search_unfiltered = lambda vector, k: batchers.searches((vector, k))
    searcher.on_close += [batchers.searches.close, batchers.texts.close]
    return batchers


def _search_group(store, requests: list[tuple[np.ndarray, int]]) -> list[Hits]:  # noqa: ANN001 (an IndexStore)
    """Unfiltered (vector, k) requests -> hits each, one index call per distinct k."""
    results: list[Hits] = [[] for _ in requests]
    by_k: dict[int, list[int]] = defaultdict(list)
    for i, (_, k) in enumerate(requests):
        by_k[k].append(i)
    for k, rows in by_k.items():
        found = store.search_many(np.stack([requests[i][0] for i in rows]), k)  # (len(rows), dim) in
        for i, hits in zip(rows, found):
            results[i] = hits
    return results


@dataclass(frozen=True)
class EncodeBatchers:
    """Whole /encode requests, batched: concurrent requests' texts go through the text tower
    together, their preprocessed images through the image tower together."""

    texts: MicroBatcher[tuple[str, ...], np.ndarray]  # one request's texts -> (n, embed_dim)
    images: MicroBatcher[torch.Tensor, np.ndarray]  # (n, 3, H, W) preprocessed -> (n, embed_dim)


def batch_encode_requests(embedder: Embedder, max_batch: int = 8) -> EncodeBatchers:
    """Batchers of whole requests (each up to the service's item limit, hence a small
    ``max_batch``). Images run through the engine in chunks of its image batch size, so memory
    stays that of one chunk's activations whatever the batch holds."""
    chunk = embedder.engine.config.image_batch_size

    def texts(requests: list[tuple[str, ...]]) -> list[np.ndarray]:
        return _split(embedder.texts([t for r in requests for t in r]), [len(r) for r in requests])

    def images(requests: list[torch.Tensor]) -> list[np.ndarray]:
        import torch

        stacked = torch.cat(requests)  # (total, 3, H, W)
        vectors = np.concatenate([embedder.engine.encode_images(c).numpy() for c in stacked.split(chunk)])
        return _split(vectors, [len(r) for r in requests])

    return EncodeBatchers(MicroBatcher(texts, max_batch, "clipforge-encode-text"),
                          MicroBatcher(images, max_batch, "clipforge-encode-image"))  # fmt: skip


def _split(rows: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """(sum(sizes), dim) -> one (size, dim) block per request, in order."""
    return np.split(rows, np.cumsum(sizes)[:-1])
