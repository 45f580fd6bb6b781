"""Search at scale: the index clipforge chooses for a large collection (IVF, nprobe calibrated by
``clipforge.index.ann.calibrate_nprobe``) against exact flat search, same vectors, same queries,
same run. Reports recall@10 against exact search and milliseconds per query.

Two distributions of L2-normalised 512-d vectors: uniform on the sphere (no structure at all:
the worst case for any partitioning index) and clustered (a two-level mixture of topics and
sub-topics, closer to real embeddings). Queries are fresh points from the same
distribution, not stored ones. Latency is one query at a time on one FAISS thread (as the
service runs it: concurrency comes from parallel requests), for both indexes.

    python bench/search_scale.py [--n 1000000] [--queries 1000] [--out bench/results/search_scale.json]

The FAISS index is built exactly as the store builds it (``AnnIndex.empty`` + ``add`` +
``calibrate_nprobe``), without the SQLite side, which does not take part in a query.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402


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
    """Median latency of one query at a time (how a service sees it)."""
    times = []
    for q in queries[:limit]:
        start = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def run(name: str, data: np.ndarray, queries: np.ndarray, threads: int, k: int = 10) -> list[dict]:
    import faiss

    from clipforge.index.ann import AnnIndex, calibrate_nprobe, choose_kind, recall_at_k

    n, dim = data.shape
    ids = np.arange(1, n + 1, dtype=np.int64)  # like SQLite row ids
    all_threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(all_threads)  # batch work (ground truth, k-means) uses every core
    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    start = time.perf_counter()
    truth = ids[flat.search(queries, k)[1]]
    flat_batch_ms = 1000 * (time.perf_counter() - start) / len(queries)
    faiss.omp_set_num_threads(threads)
    flat_ms = per_query_ms(lambda q: flat.search(q, k), queries, limit=30)
    faiss.omp_set_num_threads(all_threads)
    del flat
    gc.collect()

    kind = choose_kind(n)
    start = time.perf_counter()
    ann = AnnIndex.empty(dim, kind, train=data if kind == "ivf" else None)
    ann.add(data, ids)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    nprobe, calibrated = calibrate_nprobe(ann, data, ids)
    calibrate_s = time.perf_counter() - start
    faiss.omp_set_num_threads(threads)
    rows = []
    sweep = sorted({p for p in (8, 16, 32, 64, 128, 256, nprobe) if p <= max(ann.nlist, 1)})
    for p in sweep if kind == "ivf" else [1]:
        found = ann.search(queries, k, nprobe=p)[1]
        ms = per_query_ms(lambda q: ann.search(q, k, nprobe=p), queries)
        rows.append({
            "distribution": name, "n": n, "index": f"{kind} nlist={ann.nlist}" if kind == "ivf" else kind,
            "nprobe": p, "chosen": p == nprobe, "recall@10": recall_at_k(found, truth), "ms/query": ms,
            "flat ms/query": flat_ms, "speed-up vs flat": flat_ms / ms, "flat batched ms/query": flat_batch_ms,
            "build s": build_s, "calibrate s": calibrate_s, "calibration recall": calibrated,
        })  # fmt: skip
    return rows


SHOWN = ("distribution", "index", "nprobe", "chosen", "recall@10", "ms/query", "flat ms/query", "speed-up vs flat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--distributions", default="clustered,uniform")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads (the service uses 1).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    rows = []
    for name in args.distributions.split(","):
        rng = np.random.default_rng(0)
        make = clustered if name == "clustered" else sphere
        points = make(args.n + args.queries, args.dim, rng)
        data, queries = points[: args.n], np.ascontiguousarray(points[args.n :])
        del points
        rows += run(name, data, queries, args.threads)
        del data
        gc.collect()
        print_table(f"{name}: {args.n:,} x {args.dim}-d", [{k: r[k] for k in SHOWN} for r in rows if r["distribution"] == name])
    chosen = [r for r in rows if r["chosen"]]
    path = write_results("search_scale", rows, args.out, chosen=chosen, threads=args.threads, goal={"recall@10": 0.95, "ms/query": 2.0})
    print_table("chosen nprobe (calibrated at build time)", [{k: r[k] for k in SHOWN + ("build s",)} for r in chosen])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
