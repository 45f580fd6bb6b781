"""Streaming data loader: memory stays flat as the data set grows, and it keeps up with training.

Generates synthetic shards (small PNGs with captions, 1,000 per shard) for a small and a large
set (default 10 k and 1 M samples), then, each in a fresh process so peak memory is its own:

- ``stream``: the real streaming loader (``data.stream``) reads ``--read`` samples (the same
  number from both sets: memory must not depend on how many shards exist) with 1 and 2 workers;
  peak RSS of the main process and of its largest worker, samples/s decoded per worker;
- ``in-memory``: the in-memory path (``load_items`` + ``make_loader``) over the same shards:
  it holds every compressed image, so its peak grows with the set.

Beside them, samples/s of one training step of the demo model (``demo``, batch 256, fp32) on
this machine: the loader must not be the bottleneck.

    python bench/data_stream.py [--small 10000] [--large 1000000] [--read 20000] [--out ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

PER_SHARD = 1000
IMAGE_SIZE = 64  # the demo model's input is 64 px: decoded and preprocessed to that


def make_shards(root: Path, n: int) -> str:
    """``n`` samples in shards of ``PER_SHARD`` (reused when already there), with sizes.json."""
    import webdataset as wds
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    shards = -(-n // PER_SHARD)
    pngs = []
    for c in range(64):  # 64 distinct small images, reused: generation time is not what we measure
        buf = io.BytesIO()
        Image.new("RGB", (48, 48), (c * 4, 255 - c * 4, (c * 37) % 255)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    sizes = {}
    for s in range(shards):
        path = root / f"{s:06d}.tar"
        count = min(PER_SHARD, n - s * PER_SHARD)
        sizes[path.name] = count
        if path.exists():
            continue
        tmp = path.with_suffix(".tar.tmp")
        with wds.TarWriter(str(tmp)) as sink:
            for i in range(count):
                key = f"{s:06d}{i:04d}"
                sink.write({"__key__": key, "png": pngs[(s * 7 + i) % 64],
                            "json": json.dumps({"caption": f"a shape number {i % 64}"}).encode()})  # fmt: skip
        os.replace(tmp, path)
    (root / "sizes.json").write_text(json.dumps(sizes))
    return str(root / f"{{000000..{shards - 1:06d}}}.tar")


def _measure(mode: str, pattern: str, workers: int, read: int) -> dict:
    """Run in a child process: read ``read`` samples, report time and peak memory."""
    import functools

    import torch

    from clipforge.data import load_items, make_loader
    from clipforge.data.shard_sets import shard_sets
    from clipforge.data.stream import StreamSpec, make_stream_loader
    from clipforge.tokenizer import tokenize
    from clipforge.transforms import image_transform

    torch.set_num_threads(1)
    preprocess = image_transform(IMAGE_SIZE, train=True)
    tok = functools.partial(tokenize, context_length=77, truncate=True)
    start = time.perf_counter()
    if mode == "stream":
        spec = StreamSpec(tuple(shard_sets(pattern)), 256, workers=workers, shuffle_buffer=2000)
        loader = make_stream_loader(spec, preprocess, tok)
    else:
        items = load_items(pattern)
        loader = make_loader(items, preprocess, tok, 256, workers=workers, spread_concepts=False)
    opened = time.perf_counter() - start
    seen, start = 0, time.perf_counter()
    for batch in loader:
        seen += batch.size
        if seen >= read:
            break
    elapsed = time.perf_counter() - start
    del loader
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"open_s": opened, "samples": seen, "samples_per_s": seen / elapsed,
            "samples_per_s_per_worker": seen / elapsed / max(1, workers), "peak_rss_main_mib": own,
            "peak_rss_worker_mib": children if workers else 0.0}  # fmt: skip


def _in_child(mode: str, pattern: str, workers: int, read: int) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import data_stream as d; "
            f"print(json.dumps(d._measure({mode!r}, {pattern!r}, {workers}, {read})))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def training_step_rate(batch: int = 256, steps: int = 4) -> float:
    """Samples/s of the demo model's training step (fp32, this machine's threads)."""
    import torch

    from clipforge.factory import create_model
    from clipforge.losses import make_loss
    from clipforge.train.optim import make_optimizer
    from clipforge.train.step import train_step

    model = create_model("demo", seed=0)
    model.train()
    optimizer = make_optimizer(model, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    loss_fn = make_loss("clip", 0, 1, False)
    images = torch.randn(batch, 3, model.image_size, model.image_size)
    tokens = torch.randint(1, 49000, (batch, 16))
    train_step(model, loss_fn, images, tokens, optimizer)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, loss_fn, images, tokens, optimizer)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--read", type=int, default=20_000, help="samples the streaming loader reads from each set")
    parser.add_argument("--root", default="/tmp/clipforge-bench-shards")
    parser.add_argument("--in-memory-large", action="store_true", help="also load the large set in memory (slow)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sets = {n: make_shards(Path(args.root) / str(n), n) for n in (args.small, args.large)}
    rows = []
    for n, pattern in sets.items():
        for workers in (1, 2):
            rows.append({"path": "stream", "samples_in_set": n, "workers": workers,
                         **_in_child("stream", pattern, workers, min(args.read, n))})  # fmt: skip
    for n in (args.small, args.large) if args.in_memory_large else (args.small,):
        rows.append({"path": "in-memory", "samples_in_set": n, "workers": 2,
                     **_in_child("memory", sets[n], 2, min(args.read, n))})  # fmt: skip
    step = training_step_rate()
    small = [r for r in rows if r["path"] == "stream" and r["samples_in_set"] == args.small]
    large = [r for r in rows if r["path"] == "stream" and r["samples_in_set"] == args.large]
    growth = max(l["peak_rss_main_mib"] + l["peak_rss_worker_mib"] * l["workers"] for l in large) / max(
        s["peak_rss_main_mib"] + s["peak_rss_worker_mib"] * s["workers"] for s in small)
    print_table("streaming loader: peak memory and decode rate (demo model inputs, 64 px)", rows)
    print(f"demo model training step: {step:.0f} samples/s; streamed peak RSS large/small set: {growth:.3f}x")
    path = write_results("data_stream", rows, args.out, training_step_samples_per_s=step, rss_growth_large_vs_small=growth)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
