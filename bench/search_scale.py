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

    python bench/search_scale.py --mode memory [--n 1000000] [--queries 1000] [--explore] [--out bench/results/search_scale.json]

``--mode disk`` (the default) measures what an index built from embeddings does beyond RAM, as
``clipforge index build --from-embeddings`` builds it: the vectors are generated in chunks into
``.npy`` shards (clip-retrieval's layout, float16 by default: 1 KB per 512-d vector, so 10M fit
in 10 GB of disk; ``--dtype float32`` for 20 GB) with a parquet of paths beside each, and never
all held in RAM; the index (``bulk.build_from_embeddings``: compressed IVF-PQ under
``--memory-budget``, re-ranked exactly from the shards on disk) is built in a child
process, and searched in another, each reporting its peak memory:

- ``peak anon MiB``: the process's own memory (RssAnon, sampled every 50 ms) -- what the index
  needs; ``peak RSS MiB``: VmHWM (the shards are read with pread, not mapped, so the page cache
  that keeps their hot rows is outside the process: a machine with less RAM reads more of them
  from disk, which ``cold ms/query`` measures);
- recall@10 against exact search (brute force over the shards, as stored, on the ``--queries``
  sample of fresh queries from the same distribution);
- ``ms/query`` one at a time on one thread, through ``IndexStore.search``, each query's rows in
  the page cache (a first pass over the queries reads them); ``batched ms/query``
  through ``search_many`` in batches of ``--batch`` on every core; ``cold ms/query``: the first
  ``--cold`` queries after the shard files were dropped from the page cache (posix_fadvise), so
  every re-ranked row is read from disk;
- an effort sweep (lists probed x candidates re-ranked per result) around the calibrated one.

    python bench/search_scale.py [--n 1000000] [--work /tmp/clipforge-search-scale] [--keep]
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


# ---- disk mode: shards on disk, the index built and searched as `index build --from-embeddings` ----
def clustered_chunks(n: int, dim: int, queries: int, rng: np.random.Generator, block_subs: int = 8192):
    """``clustered`` generated block by block, never all in RAM: the same topics / sub-topics /
    points mixture, sub-topics made 8192 at a time with their points (and their share of the
    fresh queries) -> (points (c, dim), queries (q, dim)) per block."""
    topics = sphere(max(16, n // 4096), dim, rng)
    n_subs = max(1, n // 8)
    done_points = done_queries = 0
    for first in range(0, n_subs, block_subs):
        b = min(block_subs, n_subs - first)
        subs = topics[rng.integers(0, len(topics), b)] + sphere(b, dim, rng)
        subs /= np.linalg.norm(subs, axis=1, keepdims=True)
        points_to = round(n * (first + b) / n_subs)
        queries_to = round(queries * (first + b) / n_subs)
        out = []
        for count in (points_to - done_points, queries_to - done_queries):
            x = subs[rng.integers(0, b, count)] + sphere(count, dim, rng)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out.append(x)
        done_points, done_queries = points_to, queries_to
        yield out[0], out[1]


def sphere_chunks(n: int, dim: int, queries: int, rng: np.random.Generator, chunk: int = 65536):
    yield np.zeros((0, dim), np.float32), sphere(queries, dim, rng)
    for s in range(0, n, chunk):
        yield sphere(min(chunk, n - s), dim, rng), np.zeros((0, dim), np.float32)


def generate(folder: Path, name: str, args) -> None:
    """A clip-retrieval style folder of ``args.n`` vectors (img_emb/, metadata/) + queries.npy,
    written shard by shard; kept for the next run with the same parameters."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = {"n": args.n, "dim": args.dim, "queries": args.queries, "dtype": args.dtype, "shard_rows": args.shard_rows, "distribution": name}
    if (folder / "generated.json").is_file() and json.loads((folder / "generated.json").read_text()) == spec:
        return
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    make = clustered_chunks if name == "clustered" else sphere_chunks
    rows = np.empty((min(args.shard_rows, args.n), args.dim), dtype=args.dtype)  # one shard, filled in place
    queries, shard, written, filled = [], 0, 0, 0
    start = time.perf_counter()

    def flush(count: int) -> None:
        nonlocal shard, written
        np.save(folder / "img_emb" / f"img_emb_{shard}.npy", rows[:count])
        paths = [f"/images/{name}/{written + i:09d}.jpg" for i in range(count)]
        pq.write_table(pa.table({"image_path": paths, "caption": [None] * count}), folder / "metadata" / f"metadata_{shard}.parquet")
        shard, written = shard + 1, written + count

    for points, q in make(args.n, args.dim, args.queries, np.random.default_rng(0)):
        queries.append(q)
        while len(points):
            take = min(len(points), len(rows) - filled)
            rows[filled : filled + take] = points[:take]
            points, filled = points[take:], filled + take
            if filled == len(rows):
                flush(filled)
                filled = 0
    if filled:
        flush(filled)
    np.save(folder / "queries.npy", np.concatenate(queries).astype(np.float32))
    (folder / "generated.json").write_text(json.dumps(spec))
    print(f"generated {name}: {args.n:,} x {args.dim} {args.dtype} in {shard} shards, {time.perf_counter() - start:.0f} s", flush=True)


def exact_truth(folder: Path, queries: np.ndarray) -> np.ndarray:
    """Exact top-K ids (id = row + 1, as the index numbers them) by brute force over the shards
    as stored, streamed (cached in truth.npy)."""
    from clipforge.index.calibration import TopK
    from clipforge.index.shards import ShardSet, describe_shard

    cache = folder / "truth.npy"
    if cache.is_file() and np.load(cache).shape == (len(queries), K):
        return np.load(cache)
    files = sorted((folder / "img_emb").glob("*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    shards, first = [], 1
    for path in files:
        shards.append(describe_shard(path, first))
        first = shards[-1].end_id
    top = TopK(queries, K)
    for ids, vectors in ShardSet(shards).chunks():
        top.update(vectors, ids)
    np.save(cache, top.ids())
    return top.ids()


class MemorySampler:
    """Peak RssAnon and RssFile of this process, sampled every 50 ms on a thread."""

    def __init__(self) -> None:
        import threading

        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> dict:
        now = _status()
        for key in self.peak:
            self.peak[key] = max(self.peak[key], now.get(key, 0))
        return now

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.sample()
        return {"peak anon MiB": self.peak["RssAnon"] / 1024, "peak file-backed MiB": self.peak["RssFile"] / 1024,
                "peak RSS MiB": _status().get("VmHWM", 0) / 1024}  # fmt: skip


def _status() -> dict:
    """/proc/self/status memory lines in KiB (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
    return out


def build_phase(args) -> dict:
    """In a child process: build the index from the folder; time and memory."""
    import faiss

    from clipforge.index.bulk import build_from_embeddings, parse_bytes

    faiss.omp_set_num_threads(THREADS)
    sampler = MemorySampler()
    start = time.perf_counter()
    report = build_from_embeddings(args.emb, args.index, memory_budget=parse_bytes(args.memory_budget), kind=args.kind)
    seconds = time.perf_counter() - start
    return {"build s": seconds, "kind": report.kind, **sampler.stop()}


def drop_from_page_cache(folder: Path) -> None:
    for path in (folder / "img_emb").glob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def search_phase(args) -> dict:
    """In a child process: open the index read-only, search the queries; recall, latency, memory."""
    import faiss

    from clipforge.index import IndexStore

    queries = np.load(Path(args.emb) / "queries.npy")
    truth = np.load(Path(args.emb) / "truth.npy")
    if args.cold:
        drop_from_page_cache(Path(args.emb))
    sampler = MemorySampler()
    start = time.perf_counter()
    store = IndexStore.open(args.index, writable=False, searchable=True)
    open_s = time.perf_counter() - start
    after_open = sampler.sample()
    ann = store.ann
    out = {"open s": open_s, "anon MiB after open": after_open["RssAnon"] / 1024, **store.summary()}
    faiss.omp_set_num_threads(1)

    def single(qs: np.ndarray) -> tuple[list[list[int]], list[float]]:
        found, times = [], []
        for q in qs:
            t = time.perf_counter()
            hits = store.search(q, K)
            times.append(time.perf_counter() - t)
            found.append([i for i, _ in hits])
        return found, times

    if args.cold:
        _, times = single(queries[: args.cold])
        out["cold ms/query"] = 1000 * float(np.median(times))
        out["cold p99 ms"] = 1000 * float(np.percentile(times, 99))
    single(queries)  # warm: the rows these queries re-rank are in the page cache from here on
    found, times = single(queries)
    out.update({"recall@10": recall(found, truth), "ms/query": 1000 * float(np.median(times)),
                "p99 ms": 1000 * float(np.percentile(times, 99))})  # fmt: skip
    faiss.omp_set_num_threads(THREADS)
    t = time.perf_counter()
    batched = [[i for i, _ in hits] for s in range(0, len(queries), args.batch) for hits in store.search_many(queries[s : s + args.batch], K)]
    out["batched ms/query"] = 1000 * (time.perf_counter() - t) / len(queries)
    out["batched recall@10"] = recall(batched, truth)
    out["sweep"] = sweep(ann, queries[:200], truth[:200])
    out.update(sampler.stop())
    store.close()
    return out


def sweep(ann, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    """Recall and single-query ms around the calibrated effort (lists probed x re-ranked per result)."""
    import faiss

    if ann.kind != "ivfpq":
        return []
    chosen, rerank = ann.nprobe, ann.rerank
    rows = []
    faiss.omp_set_num_threads(1)
    for nprobe in sorted({max(1, chosen // 2), chosen, min(ann.nlist, chosen * 2)}):
        for factor in (8, 16, 32, 64):
            ann.rerank = factor
            times, found = [], []
            for q in queries:  # warm: another effort re-ranks other rows, first read from disk
                ann.search(q[None], K, nprobe=nprobe)
            for q in queries:
                t = time.perf_counter()
                found.append(ann.search(q[None], K, nprobe=nprobe)[1][0])
                times.append(time.perf_counter() - t)
            rows.append({"nprobe": nprobe, "rerank": factor, "chosen": (nprobe, factor) == (chosen, rerank),
                         "recall@10": recall(found, truth), "ms/query": 1000 * float(np.median(times))})  # fmt: skip
    ann.rerank = rerank
    faiss.omp_set_num_threads(THREADS)
    return rows


def child(phase: str, args, emb: Path, index: Path) -> dict:
    """Run one phase in a fresh process (its peak memory is its own) -> its JSON result."""
    import json
    import subprocess

    argv = [sys.executable, __file__, "--phase", phase, "--emb", str(emb), "--index", str(index),
            "--memory-budget", args.memory_budget, "--kind", args.kind, "--batch", str(args.batch), "--cold", str(args.cold)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


DISK_SHOWN = ("distribution", "n", "shard dtype", "shards GB", "factory", "nprobe", "rerank", "recall@10", "ms/query", "p99 ms",
              "cold ms/query", "batched ms/query", "build s", "build peak anon MiB", "build peak RSS MiB",
              "search peak anon MiB", "search peak RSS MiB", "index MB")  # fmt: skip


def disk_main(args) -> None:
    import json
    import shutil

    work = Path(args.work)
    rows = []
    for name in args.distributions.split(","):
        emb, index = work / f"{name}-{args.n}" / "emb", work / f"{name}-{args.n}" / "index"
        generate(emb, name, args)
        start = time.perf_counter()
        exact_truth(emb, np.load(emb / "queries.npy"))
        truth_s = time.perf_counter() - start
        measured = index.parent / "build.json"  # the build's figures, for a later --reuse-index run
        if args.reuse_index and (index / "meta.sqlite").is_file():
            built = json.loads(measured.read_text()) if measured.is_file() else {}
        else:
            shutil.rmtree(index, ignore_errors=True)
            built = child("build", args, emb, index)
            measured.write_text(json.dumps(built))
            print(f"{name}: built {built}", flush=True)
        searched = child("search", args, emb, index)
        disk = sum(f.stat().st_size for f in (emb / "img_emb").glob("*.npy"))
        row = {"distribution": name, "n": args.n, "dim": args.dim, "shard dtype": args.dtype, "shards GB": disk / 1e9,
               "index MB": sum(f.stat().st_size for f in index.glob("*")) / 2**20, "truth s": truth_s,
               "memory budget": args.memory_budget, **{f"build {k}" if "MiB" in k else k: v for k, v in built.items()},
               **{f"search {k}" if "MiB" in k else k: v for k, v in searched.items()}}  # fmt: skip
        rows.append(row)
        print_table(f"{name}: {args.n:,} x {args.dim}-d on disk", [{k: row.get(k) for k in DISK_SHOWN}])
        print_table(f"{name}: effort sweep (200 queries, one thread, rows in the page cache)", row["sweep"])
        if not args.keep and not args.reuse_index:
            shutil.rmtree(index, ignore_errors=True)
    goal = {"recall@10": 0.95, "ms/query": 5.0, "peak anon MiB": 2048}
    path = write_results("search_scale_disk", rows, args.out, threads_single=1, threads_batched=THREADS, batch=args.batch, goal=goal)
    print(f"wrote {path}")


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
    parser.add_argument("--mode", default="disk", choices=("disk", "memory"), help="disk: shards + index built from embeddings; memory: the in-memory kinds")
    parser.add_argument("--work", default="/tmp/clipforge-search-scale", help="disk mode: where shards and indexes go")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="disk mode: shard dtype")
    parser.add_argument("--shard-rows", type=int, default=1_000_000, help="disk mode: vectors per shard file")
    parser.add_argument("--memory-budget", default="2GiB", help="disk mode: the index's memory budget")
    parser.add_argument("--cold", type=int, default=200, help="disk mode: queries measured after dropping the shards from the page cache (0: none)")
    parser.add_argument("--keep", action="store_true", help="disk mode: keep the indexes (shards are always kept for the next run)")
    parser.add_argument("--reuse-index", action="store_true", help="disk mode: search a kept index instead of building it again")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--emb", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        import json

        print(json.dumps((build_phase if args.phase == "build" else search_phase)(args)))
        return
    if args.mode == "disk":
        disk_main(args)
        return

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
