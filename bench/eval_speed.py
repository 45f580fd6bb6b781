"""Evaluation speed: zero-shot + retrieval + linear probe on 10,000 images with the tiny model,
embedding once and reusing the features across tasks (the time includes decoding and
preprocessing every image from PNG files on disk).

    python bench/eval_speed.py [--n 10000] [--out ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402


def make_folder(root: Path, n: int, classes: int = 10) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
    pixels = (torch.rand(n, 32, 32, 3, generator=g) * 255).byte().numpy()
    for i in range(n):
        Image.fromarray(pixels[i]).save(root / f"class_{i % classes}" / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)

    import clipforge
    from clipforge.eval.eval_data import load_eval_data
    from clipforge.eval.run import evaluate_linear_probe_data, evaluate_retrieval_data, evaluate_zeroshot_data

    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp), args.n)
        model = clipforge.create_model("tiny-vit", seed=0)
        preprocess = clipforge.create_preprocess(model)
        start = time.perf_counter()
        data = load_eval_data(tmp)
        data.captions = [[f"a photo of {data.classnames[y]}"] for y in data.labels]
        cache: dict = {}
        timings = {}
        for name, fn in (("zero-shot", lambda: evaluate_zeroshot_data(model, preprocess, data, ["a photo of a {}."], cache)),
                         ("retrieval", lambda: evaluate_retrieval_data(model, preprocess, data, cache)),
                         ("linear probe", lambda: evaluate_linear_probe_data(model, preprocess, data, cache=cache))):  # fmt: skip
            t = time.perf_counter()
            fn()
            timings[name] = time.perf_counter() - t
        total = time.perf_counter() - start
    rows = [{"task": k, "seconds": v} for k, v in timings.items()] + [{"task": "all three (one embedding pass)", "seconds": total}]
    print_table(f"Evaluation of {args.n} images (32 px PNG files), tiny-vit, 2 threads", rows)
    print("results:", write_results("eval_speed", rows, args.out, n_images=args.n, goal_seconds=60))


if __name__ == "__main__":
    main()
