"""Embedding at scale: one process (``embed_collection``: DataLoader decoding workers, the engine in
the main process) against Ray Data (``embed_with_ray``: decode tasks, an actor pool of engines)
with 1 and 2 embedding actors, on the same images, same model, same output layout.

Columns: wall seconds and end-to-end img/s of the whole call (listing, decoding, embedding,
writing); ``first batch s``: from the call to the first embedded batch back in the calling
process (for Ray, mostly starting the actors: a fresh process each, torch imported, the model
unpickled); ``model s``: the time inside the engine, summed over actors; ``overhead s``: wall
minus the single-process wall;
``max |diff|``: the largest difference of any vector from the single-process output (they must
agree to 1e-6 in fp32); ``after first img/s``: the rate from the first batch on (the other
images over the time after it), which leaves the start-up out. The local Ray's own start
(``ray.init``) is measured once and reported beside the table, not in any row: a cluster is
started once and serves many jobs.

On a machine of a few cores Ray cannot win: the same CPUs decode and embed either way, and Ray
adds process start-up, serialisation of pixels through its object store and scheduling. What
it buys is the same command on many machines; this table says what it costs on one.

    python bench/embed_scale.py [--images 300] [--model tiny-vit] [--size 96] [--address HOST:PORT]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# A local Ray on loopback only (Ray otherwise swaps 127.0.0.1 for the machine's outward address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402


def make_images(root: Path, n: int, size: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size + i % 17, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / (f"{i:05d}.jpg" if i % 2 else f"{i:05d}.png"))
    return root


def vectors(out: Path) -> np.ndarray:
    return np.concatenate([np.load(p) for p in sorted((out / "img_emb").glob("*.npy"))])


def timed(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    """-> (summary, wall s, after-first-batch img/s, first batch s)."""
    start, first = time.perf_counter(), []

    def progress(done: int, _total: int) -> None:
        if done and not first:
            first.append((time.perf_counter() - start, done))

    summary = fn(*args, progress=progress, **kwargs)
    wall = time.perf_counter() - start
    at, done = first[0]
    rest = summary.processed - done
    return summary, wall, (rest / (wall - at) if rest and wall > at else None), at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--model", default="tiny-vit", help="registry name (random weights)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--workers", default="1,2", help="Ray embedding actors, one row each")
    parser.add_argument("--address", default=None, help="an existing Ray cluster (default: a local one)")
    parser.add_argument("--work", default=None, help="folder for images and outputs (default: a temporary one)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import ray

    from clipforge.factory import create_model, create_preprocess
    from clipforge.inference import embed_collection, embed_with_ray
    from clipforge.inference.image_batches import default_workers

    work = Path(args.work or tempfile.mkdtemp(prefix="clipforge-embed-scale-"))
    folder = make_images(work / "images", args.images, args.size)
    model = create_model(args.model, seed=0)
    preprocess = create_preprocess(model)
    common = {"shard_size": args.shard_size, "batch_size": args.batch_size, "precision": "fp32"}

    summary, wall, after, first = timed(embed_collection, model, preprocess, folder, work / "single",
                                        workers=default_workers(), **common)  # fmt: skip
    single = vectors(work / "single")
    rows = [{"mode": "one process", "workers": f"{default_workers()} decoders", "images": summary.processed,
             "wall s": wall, "img/s": summary.processed / wall, "first batch s": first,
             "after first img/s": after,
             "model s": summary.engine_seconds, "overhead s": 0.0, "max |diff|": 0.0}]  # fmt: skip

    start = time.perf_counter()
    if args.address:
        ray.init(address=args.address, logging_level="WARNING")
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    ray_start = time.perf_counter() - start
    cpus = ray.cluster_resources().get("CPU", 1.0)
    for workers in [int(w) for w in args.workers.split(",")]:
        # Logical CPUs: the actors share half the cluster, decode tasks half a CPU each.
        share = {"cpus_per_worker": cpus / 2 / workers, "cpus_per_decode": 0.5}
        out = work / f"ray{workers}"
        shutil.rmtree(out, ignore_errors=True)
        summary, wall, after, first = timed(embed_with_ray, model, preprocess, folder, out, workers=workers,
                                            **share, **common)  # fmt: skip
        rows.append({"mode": "ray", "workers": f"{workers} actor(s)", "images": summary.processed, "wall s": wall,
                     "img/s": summary.processed / wall, "first batch s": first,
                     "after first img/s": after,
                     "model s": summary.engine_seconds,
                     "overhead s": wall - rows[0]["wall s"],
                     "max |diff|": float(np.abs(vectors(out) - single).max())})  # fmt: skip
    ray.shutdown()

    title = (f"clipforge embed at scale: {args.images} images {args.size}px, {args.model}, fp32, batch "
             f"{args.batch_size}, {os.cpu_count()} CPUs (local Ray start {ray_start:.1f} s, not in the rows)")  # fmt: skip
    print_table(title, rows)
    path = write_results("embed_scale", rows, args.out, ray_start_s=ray_start, images=args.images, size=args.size,
                         model=args.model, batch_size=args.batch_size, shard_size=args.shard_size,
                         ray_version=ray.__version__)  # fmt: skip
    print(f"wrote {path}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
