"""Search at scale: the index clipforge builds for a large collection (``clipforge.index.choose.build``:
IVF with nprobe calibrated, or pqfs where IVF cannot reach the target) against exact flat search,
same vectors, same queries, same run. Reports recall@10 against exact search, single-query
latency and batched throughput, build time and memory.

Two distributions of L2-normalised 512-d vectors: uniform on the sphere (no structure at all:
the worst case for any partitioning index) and clustered (a two-level mixture of topics and
sub-topics, closer to real embeddings). Queries are fresh points from the same distribution,
not stored ones. Two timings, never mixed:

- ``ms/query``: one query at a time on one FAISS thread (as the service runs it: concurrency
  comes from parallel requests), median over up to 300 queries;
- ``batched ms/query``: throughput mode, wall time / queries when micro-batches of ``--batch``
  queries are searched together on every core; a request then waits for its whole batch
  (``batch latency ms``);
- ``served ms/query`` (the chosen effort and exact flat search): as ``clipforge serve`` runs
  queries, ``--clients`` threads each send one query at a time through the service's
  micro-batcher (``clipforge.serve.batching``), which searches whatever queued up while the
  previous batch ran: wall time / queries, with each request's p50 / p99 latency.

``effort`` is nprobe for IVF, candidates re-ranked per result (k_factor) for pqfs and the
refine indexes, efSearch for HNSW. ``--explore`` adds the alternatives that lost (HNSW at
``--explore-n`` vectors, its build being slow; 1 bit/dim fast-scan codes + exact re-rank; exact
search as bf16 matrix products in batches) so the whole trade-off is in one file.

    python bench/search_scale.py [--n 1000000] [--queries 1000] [--explore] [--out bench/results/search_scale.json]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

K = 10
THREADS = os.cpu_count() or 1  # batch work (ground truth, k-means, batched search) uses every core


def sphere(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """A two-level mixture, like topics and sub-topics of real embeddings: n/4096 topic centres,
    n/8 sub-topic centres around them, points around those (nearest-neighbour cosine ~0.53)."""
    topics = sphere(max(16, n // 4096), dim, rng)
    subs = topics[rng.integers(0, len(topics), n // 8)] + sphere(n // 8, dim, rng)
    subs /= np.linalg.norm(subs, axis=1, keepdims=True)
    x = subs[rng.integers(0, len(subs), n)]
    x += sphere(n, dim, rng)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def per_query_ms(search, queries: np.ndarray, limit: int = 300) -> float:
    """Median latency of one query at a time on one thread (how a service sees it)."""
    import faiss

    faiss.omp_set_num_threads(1)
    times = []
    for q in queries[:limit]:
        start = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - start)
    faiss.omp_set_num_threads(THREADS)
    return 1000 * float(np.median(times))


def batched_ms(search, queries: np.ndarray, batch: int) -> float:
    """Throughput mode: wall ms / query over micro-batches of ``batch`` queries, every core."""
    start = time.perf_counter()
    for s in range(0, len(queries), batch):
        search(queries[s : s + batch])
    return 1000 * (time.perf_counter() - start) / len(queries)


def measure(search, queries, truth, batch: int, single_limit: int = 300) -> dict:
    """search: (q, dim) -> ids (q, K). Recall vs exact, single-query ms, batched ms."""
    found = np.concatenate([search(queries[s : s + batch]) for s in range(0, len(queries), batch)])
    single = per_query_ms(search, queries, single_limit)
    many = batched_ms(search, queries, batch)
    return {"recall@10": recall(found, truth), "ms/query": single, "batched ms/query": many, "batch latency ms": many * batch}


def served(search, queries: np.ndarray, clients: int) -> dict:
    """``clients`` threads, one query at a time each, through the service's micro-batcher."""
    from clipforge.serve.batching import MicroBatcher

    batcher = MicroBatcher(lambda qs: list(search(np.stack(qs))), max_batch=64)

    def client(part: np.ndarray) -> list[float]:
        latencies = []
        for q in part:
            start = time.perf_counter()
            batcher(q)
            latencies.append(time.perf_counter() - start)
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for part in pool.map(client, np.array_split(queries, clients)) for t in part]
    wall = time.perf_counter() - start
    batcher.close()
    return {"served ms/query": 1000 * wall / len(queries), "served p50 ms": 1000 * float(np.median(latencies)),
            "served p99 ms": 1000 * float(np.percentile(latencies, 99)), "served mean batch": batcher.requests / batcher.batches}  # fmt: skip


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    from clipforge.index.calibration import recall_at_k

    return recall_at_k(found, truth)


def exact(data: np.ndarray, queries: np.ndarray, ids: np.ndarray, batch: int, clients: int) -> tuple[np.ndarray, dict]:
    """Ground truth (q, K) ids and the row for exact flat search (FAISS IndexFlatIP)."""
    import faiss

    flat = faiss.IndexFlatIP(data.shape[1])
    flat.add(data)
    truth = ids[flat.search(queries, K)[1]]
    def search(q: np.ndarray) -> np.ndarray:
        return ids[flat.search(q, K)[1]]

    row = measure(search, queries, truth, batch, single_limit=20) | served(search, queries, clients)
    return truth, {"index": "flat (exact)", "effort": 0, "build s": 0.0, "memory MB": data.nbytes / 2**20, **row}


def ann_rows(data, queries, ids, truth, batch: int, requested: str, clients: int) -> list[dict]:
    """clipforge's own choice, as the store builds it, swept over its search effort."""
    from clipforge.index.choose import build

    start = time.perf_counter()
    ann, calibrated = build(data, ids, requested)
    build_s = time.perf_counter() - start
    chosen, rows = ann.nprobe, []
    name = f"ivf nlist={ann.nlist}" if ann.kind == "ivf" else ann.kind
    for effort in _efforts(ann, chosen):
        def search(q: np.ndarray, e: int = effort) -> np.ndarray:
            return ann.search(q, K, nprobe=e)[1]

        row = measure(search, queries, truth, batch)
        if effort == chosen:
            row.update(served(search, queries, clients))
        rows.append({"index": name, "effort": effort, "chosen": effort == chosen, "build s": build_s,
                     "calibration recall": calibrated, "memory MB": _memory_mb(ann), **row})  # fmt: skip
    return rows


def _efforts(ann, chosen: int) -> list[int]:
    if ann.kind == "ivf":
        return sorted({p for p in (8, 16, 32, 64, 128, 256, chosen) if p <= ann.nlist})
    return sorted({4, 8, 16, 32, 64, chosen})


def _memory_mb(ann) -> float:
    """Vectors, ids and codes (FAISS's own overheads, e.g. the id hash map, left out)."""
    total = ann.ntotal * (4 * ann.dim + 8)
    if ann.kind == "pqfs":
        total += ann.ntotal * ann.fast.code_size
    return total / 2**20


def refine_rows(data, queries, truth, batch: int, spec: str) -> list[dict]:
    """A fast-scan code of ``spec`` for every vector + exact re-rank (IndexRefineFlat)."""
    import faiss

    start = time.perf_counter()
    index = faiss.IndexRefineFlat(faiss.index_factory(data.shape[1], spec, faiss.METRIC_INNER_PRODUCT))
    index.train(data[:100_000])
    index.add(data)
    build_s = time.perf_counter() - start
    code = faiss.downcast_index(index.base_index).code_size
    rows = []
    for factor in (16, 64, 256, 1024):
        params = faiss.IndexRefineSearchParameters(k_factor=factor)
        row = measure(lambda q, p=params: index.search(q, K, params=p)[1] + 1, queries, truth, batch, single_limit=100)  # ids = row + 1
        rows.append({"index": f"{spec} + exact re-rank", "effort": factor, "build s": build_s,
                     "memory MB": len(data) * (4 * data.shape[1] + code) / 2**20, **row})  # fmt: skip
    return rows


def hnsw_rows(data, queries, batch: int, m: int = 32) -> list[dict]:
    """HNSW (IndexHNSWFlat, inner product) on ``data`` with its own exact ground truth."""
    import faiss

    truth = exact_top(data, queries)
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 100
    index.add(data)
    build_s = time.perf_counter() - start
    rows = []
    for ef in (128, 512, 1024, 2048, 4096):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        row = measure(lambda q, p=params: index.search(q, K, params=p)[1], queries, truth, batch, single_limit=100)
        rows.append({"index": f"hnsw M={m} efC=100", "n": len(data), "effort": ef, "build s": build_s,
                     "memory MB": len(data) * (4 * data.shape[1] + 8 * m) / 2**20, **row})  # fmt: skip
    return rows


def exact_top(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(data.shape[1])
    flat.add(data)
    return flat.search(queries, K)[1]


def bf16_rows(data, queries, truth, batch: int, fetch: int = 32, chunk: int = 65536) -> list[dict]:
    """Exact search as bf16 matrix products per micro-batch (torch), the best ``fetch`` of each
    chunk kept, then re-scored in fp32. Throughput mode only: one query reads all 1 GB."""
    import torch

    torch.set_num_threads(THREADS)
    low, full = torch.from_numpy(data).to(torch.bfloat16), torch.from_numpy(data)  # (n, dim) each

    def search(q: np.ndarray) -> np.ndarray:
        qt = torch.from_numpy(q)
        best_s, best_i = torch.full((len(q), fetch), -2.0), torch.zeros((len(q), fetch), dtype=torch.int64)
        for s in range(0, len(data), chunk):
            scores = (qt.to(torch.bfloat16) @ low[s : s + chunk].T).float()  # (q, chunk)
            v, i = torch.topk(scores, min(fetch, scores.shape[1]), dim=1)
            best_s, j = torch.topk(torch.cat([best_s, v], 1), fetch, dim=1)
            best_i = torch.gather(torch.cat([best_i, i + s], 1), 1, j)
        rescored = torch.einsum("qd,qfd->qf", qt, full[best_i])  # (q, fetch) fp32
        return torch.gather(best_i, 1, torch.topk(rescored, K, dim=1).indices).numpy() + 1  # ids = row + 1

    found = np.concatenate([search(queries[s : s + batch]) for s in range(0, len(queries), batch)])
    many = batched_ms(search, queries, batch)
    return [{"index": "flat bf16 matmul + fp32 re-rank (batched only)", "effort": fetch, "build s": 0.0,
             "memory MB": data.nbytes * 1.5 / 2**20, "recall@10": recall(found, truth), "ms/query": None,
             "batched ms/query": many, "batch latency ms": many * batch}]  # fmt: skip


def run(name: str, data: np.ndarray, queries: np.ndarray, args) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(THREADS)
    ids = np.arange(1, len(data) + 1, dtype=np.int64)  # like SQLite row ids
    truth, flat = exact(data, queries, ids, args.batch, args.clients)
    rows = [flat] + ann_rows(data, queries, ids, truth, args.batch, args.kind, args.clients)
    gc.collect()
    if args.explore and name == "uniform":
        rows += bf16_rows(data, queries, truth, args.batch)
        for spec in ("PQ128x4fs", "RaBitQfs"):
            rows += refine_rows(data, queries, truth, args.batch, spec)
            gc.collect()
        rows += hnsw_rows(data[: args.explore_n], queries, args.batch)
    for row in rows:
        row.setdefault("n", len(data))
        row.setdefault("chosen", False)
        row["flat ms/query"] = flat["ms/query"]
        row["distribution"] = name
    return rows


SHOWN = ("distribution", "n", "index", "effort", "chosen", "recall@10", "ms/query", "batched ms/query", "served ms/query",
         "served p99 ms", "build s", "memory MB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="micro-batch size of the throughput mode")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients of the served mode")
    parser.add_argument("--kind", default="auto", help="index kind requested from build (auto, ivf, pqfs)")
    parser.add_argument("--distributions", default="clustered,uniform")
    parser.add_argument("--explore", action="store_true", help="also measure the alternatives that lost")
    parser.add_argument("--explore-n", type=int, default=100_000, help="vectors for HNSW (slow to build)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    rows = []
    for name in args.distributions.split(","):
        rng = np.random.default_rng(0)
        make = clustered if name == "clustered" else sphere
        points = make(args.n + args.queries, args.dim, rng)
        data, queries = points[: args.n], np.ascontiguousarray(points[args.n :])
        del points
        rows += run(name, data, queries, args)
        del data
        gc.collect()
        print_table(f"{name}: {args.n:,} x {args.dim}-d", [{k: r.get(k) for k in SHOWN} for r in rows if r["distribution"] == name])
    chosen = [r for r in rows if r["chosen"]]
    goal = {"recall@10": 0.95, "ms/query": 2.0}
    path = write_results("search_scale", rows, args.out, chosen=chosen, threads_single=1, threads_batched=THREADS,
                         batch=args.batch, clients=args.clients, goal=goal)  # fmt: skip
    print_table("chosen effort (calibrated at build time)", [{k: r.get(k) for k in SHOWN} for r in chosen])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
