"""Load on the search service: 200 concurrent clients (asyncio + httpx) against a real
`clipforge serve` process on 127.0.0.1 for a fixed time, mixed queries, once with the service's
micro-batching off and once on, from Python clients (asyncio + httpx) and, where installed, from
wrk (`apt-get install wrk`: a C load generator, so the server rather than the clients is measured). Reports errors, p50/p99 latency and queries/s, next to the same
queries run in-process through the library (the peer: what HTTP, JSON and concurrency cost), in
the same run.

    python bench/serve_load.py [--clients 200] [--seconds 20] [--images 500] [--workers 1,2] [--profile]
                               [--generators wrk,httpx] [--out bench/results/serve_load.json]

``--workers``: the wrk rows run `clipforge serve --workers N` for each N (1: one process; N > 1:
a writer and N - 1 read-only replicas on the same port). ``--profile``: py-spy samples the
server's processes during one more wrk run (micro-batched, the last worker count) and the
table splits the server's CPU by where it goes (HTTP server, FastAPI + validation + JSON, our
service code, the text tower, the index search), from the innermost frame of each sample that
belongs to one of them.

The model is tiny-vit (random weights, seed 0): the numbers measure the service, not a model.
Clients and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle"]


def make_images(root: Path, n: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("a", "b", "c")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8))
        ImageDraw.Draw(image).ellipse((8, 8, 40, 36), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        image.save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(f"a {COLOURS[i % 8]} {SHAPES[i % 3]} number {i}")


def request_for(i: int, n_items: int) -> tuple[str, dict]:
    """A mix: unique texts (model runs), repeated texts (cache), item ids, filters, knn-service."""
    r = i % 10
    text = f"a {COLOURS[i % 8]} {SHAPES[i % 3]} number {i}"
    if r < 4:
        return "/api/search", {"text": text, "k": 10}
    if r < 6:
        return "/api/search", {"text": f"a {COLOURS[i % 8]} {SHAPES[i % 3]}", "k": 10}
    if r < 8:
        return "/api/search", {"image_id": 1 + i % n_items, "k": 20}
    if r < 9:
        return "/api/search", {"text": text, "k": 10, "filters": {"folder": "b", "where": [{"field": "id", "op": ">", "value": 50}]}}
    return "/knn-service", {"text": text, "modality": "image", "num_images": 10, "indice_name": "idx"}


def library_peer(index: Path, n_items: int, seconds: float) -> dict:
    """The same request mix through the library, one after another, in this process."""
    import faiss
    import torch

    from clipforge.index import Condition, Query, SearchFilter, open_searcher

    torch.set_num_threads(1)  # as the server runs each request (serve --threads 1)
    faiss.omp_set_num_threads(1)
    searcher = open_searcher(index)
    latencies, i, end = [], 0, time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            _, body = request_for(i, n_items)
            start = time.perf_counter()
            flt = None
            if "filters" in body:
                flt = SearchFilter(folder="b", where=(Condition("id", ">", 50),))
            q = Query(text=body.get("text"), image_id=body.get("image_id"))
            searcher.search(q, body.get("k", body.get("num_images", 10)), flt)
            latencies.append(time.perf_counter() - start)
            i += 1
    finally:
        searcher.store.close()
    return summary("library (in-process, sequential)", latencies, 0, seconds)


def summary(name: str, latencies: list[float], errors: int, seconds: float) -> dict:
    ms = np.array(latencies) * 1000
    return {
        "setup": name, "requests": len(latencies) + errors, "errors": errors, "queries/s": len(latencies) / seconds,
        "p50 ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99 ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
    }  # fmt: skip


async def load(url: str, clients: int, seconds: float, n_items: int) -> tuple[dict, dict]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(10**9))
    end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while time.perf_counter() < end:
                path, body = request_for(next(counter), n_items)
                start = time.perf_counter()
                try:
                    response = await client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
                    ok = response.status_code == 200
                    key = f"HTTP {response.status_code}"
                except httpx.HTTPError as e:
                    ok, key = False, type(e).__name__
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[key] = errors.get(key, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return summary(f"HTTP ({clients} clients)", latencies, sum(errors.values()), elapsed), errors


WRK_SCRIPT = """
local requests = {%s}
local i = 0
request = function()
  i = i + 1
  local r = requests[(i %% #requests) + 1]
  return wrk.format("POST", r[1], {["Content-Type"] = "application/json"}, r[2])
end
done = function(summary, latency, _)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %%d, "seconds": %%f, "errors": %%d, "p50 ms": %%f, "p99 ms": %%f}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def wrk_load(url: str, clients: int, seconds: float, n_items: int, script: Path) -> tuple[dict, dict]:
    """The same request mix from wrk (a C load generator: the server, not the clients, is measured)."""
    entries = ", ".join(f"{{[==[{path}]==], [==[{json.dumps(body)}]==]}}" for path, body in (request_for(i, n_items) for i in range(1000)))
    script.write_text(WRK_SCRIPT % entries)
    threads = str(min(clients, os.cpu_count() or 1))
    out = subprocess.run(["wrk", "-t", threads, "-c", str(clients), "-d", f"{seconds:.0f}s", "--timeout", "60s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    stats = json.loads(next(line for line in out.splitlines() if line.startswith("WRK "))[4:])
    ok = stats["requests"] - stats["errors"]
    row = {"setup": f"HTTP ({clients} connections, wrk)", "requests": stats["requests"], "errors": stats["errors"],
           "queries/s": ok / stats["seconds"], "p50 ms": stats["p50 ms"], "p99 ms": stats["p99 ms"]}  # fmt: skip
    return row, ({"wrk errors": stats["errors"]} if stats["errors"] else {})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, log: Path, batch: bool, workers: int = 1) -> tuple[subprocess.Popen, list[int]]:
    """`clipforge serve` answering on ``port`` -> (process, pids of the processes that serve)."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "clipforge", "serve", str(index), "--port", str(port), "--host", "127.0.0.1",
                             "--log-level", "warning", "--batch-queries" if batch else "--no-batch-queries", "--workers", str(workers)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # fmt: skip
    pids: set[int] = set()
    for _ in range(1500):
        try:
            body = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()  # a new connection each time
            pids.add(body["pid"])
            if len(pids) == workers:  # every worker has loaded the model and answers
                return proc, sorted(pids)
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


def load_server(index: Path, args, batch: bool, generator: str, log: Path, workers: int = 1, profile: bool = False) -> tuple[dict, dict, int]:
    """Start `clipforge serve` (micro-batching on or off, ``workers`` processes), load it, stop it
    -> row, errors, bad log lines. ``profile``: py-spy samples the server meanwhile."""
    port = free_port()
    proc, pids = start_server(index, port, log, batch, workers)
    spy = start_profiler(proc.pid, args.seconds, log.with_suffix(".stacks")) if profile else None
    try:
        server_cpu, client_cpu = sum(cpu_seconds(p) for p in pids), time.process_time()
        url = f"http://127.0.0.1:{port}"
        if generator == "wrk":
            served, errors = wrk_load(url, args.clients, args.seconds, args.images, log.with_suffix(".lua"))
        else:
            served, errors = asyncio.run(load(url, args.clients, args.seconds, args.images))
        done = max(served["requests"], 1)
        served["server CPU ms/req"] = 1000 * (sum(cpu_seconds(p) for p in pids) - server_cpu) / done
        if generator == "httpx":  # wrk runs in its own process
            served["client CPU ms/req"] = 1000 * (time.process_time() - client_cpu) / done
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    served["setup"] += (f", {workers} workers" if workers > 1 else "") + (", micro-batched" if batch else ", one query at a time")
    if spy is not None:
        spy.wait(timeout=120)
        served["profile"] = profile_table(log.with_suffix(".stacks"))
    bad = [line for line in log.read_text().splitlines() if "Traceback" in line or " 500 " in line]
    return served, errors, len(bad)


# Where a sample's CPU goes: the innermost frame (leaf first) whose file matches one of these.
PROFILE_PARTS = [
    ("text tower (torch)", ("torch/", "clipforge/models/", "clipforge/inference/")),
    ("tokenizer", ("clipforge/tokenizer",)),
    ("index search (FAISS, SQLite, re-rank)", ("faiss/", "clipforge/index/", "sqlite3")),
    ("service code (clipforge/serve)", ("clipforge/serve/",)),
    ("FastAPI + validation + JSON", ("fastapi/", "starlette/", "pydantic", "json/", "anyio/")),
    ("HTTP server (uvicorn, parsing, event loop)", ("uvicorn/", "h11/", "httptools", "asyncio/", "uvloop", "concurrent/", "threading.py")),
]


def start_profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """py-spy (pip install py-spy; needs ptrace) recording the server ``pid`` and its workers."""
    if not shutil.which("py-spy"):
        print("py-spy not found (pip install py-spy): no profile")
        return None
    cmd = ["py-spy", "record", "--format", "raw", "--rate", "250", "--duration", str(int(seconds)), "--nonblocking", "--gil",
           "--pid", str(pid), "--subprocesses", "-o", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_table(stacks: Path) -> dict[str, float]:
    """Collapsed stacks (py-spy raw) -> share of the samples per part, in %."""
    counts: dict[str, int] = {}
    if not stacks.is_file():
        return {}
    for line in stacks.read_text().splitlines():
        frames, _, n = line.rpartition(" ")
        part = next((name for frame in reversed(frames.split(";")) for name, keys in PROFILE_PARTS if any(k in frame for k in keys)), "other")
        counts[part] = counts.get(part, 0) + int(n)
    total = max(sum(counts.values()), 1)
    return {name: round(100 * n / total, 1) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--workers", default="1,2", help="worker counts of the wrk rows (serve --workers N)")
    parser.add_argument("--generators", default="httpx,wrk", help="load generators: httpx (Python clients), wrk")
    parser.add_argument("--profile", action="store_true", help="also profile the server with py-spy under wrk")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import clipforge
    from clipforge.index import build_index

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "images", args.images)
        model = clipforge.save(clipforge.create_model("tiny-vit", seed=0), tmp / "tiny.safetensors")
        index = tmp / "idx"
        build_index(tmp / "images", str(model), index, workers=0)
        peer = library_peer(index, args.images, min(args.seconds, 10.0))
        rows, errors, server_errors = [peer], {}, 0
        generators = [g for g in args.generators.split(",") if g != "wrk" or shutil.which("wrk")]
        if "wrk" in args.generators and "wrk" not in generators:
            print("wrk not found (apt-get install wrk): Python clients only, which saturate the cores first")
        counts = [int(w) for w in args.workers.split(",")]
        runs = [(g, b, w, False) for g in generators for w in (counts if g == "wrk" else [1]) for b in (False, True)]
        if args.profile and "wrk" in generators:
            runs.append(("wrk", True, counts[-1], True))
        for generator, batch, workers, profile in runs:
            log = tmp / f"server-{generator}-{batch}-{workers}-{profile}.log"
            row, errs, bad_lines = load_server(index, args, batch, generator, log, workers, profile)
            row["qps ratio vs library"] = row["queries/s"] / peer["queries/s"]
            if profile:
                row["setup"] += ", profiled (py-spy)"
            rows.append(row)
            errors.update({f"{row['setup']}: {k}": v for k, v in errs.items()})
            server_errors += bad_lines
    profiles = {row["setup"]: row.pop("profile") for row in rows if "profile" in row}
    print_table(f"search service under load ({args.clients} clients, {args.seconds:.0f} s, {args.images} images)", rows)
    for setup, shares in profiles.items():
        print_table(f"where the server's CPU goes (% of samples): {setup}", [{"part": k, "%": v} for k, v in shares.items()])
    if errors:
        print(f"errors by kind: {errors}")
    path = write_results("serve_load", rows, args.out, errors_by_kind=errors, server_error_lines=server_errors, profiles=profiles,
                         clients=args.clients, seconds=args.seconds, images=args.images, cpu_count=os.cpu_count())  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
