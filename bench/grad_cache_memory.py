"""Peak memory of one training step on a 4,096-sample batch of the tiny model, with and
without the gradient cache (micro-batch 256). Each configuration runs in a fresh process and
reports its peak resident memory; the model and data alone are measured too.

    python bench/grad_cache_memory.py [--batch 4096] [--micro 256] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

CHILD = r"""
import json, resource, sys, torch
from clipforge.factory import create_model
from clipforge.losses import ClipLoss
from clipforge.train.step import train_step
batch, micro, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(2)
model = create_model("tiny-vit", seed=0).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
g = torch.Generator().manual_seed(0)
images = torch.randn(batch, 3, 32, 32, generator=g)
tokens = torch.zeros(batch, 77, dtype=torch.long)
tokens[:, 0], tokens[:, 1:12], tokens[:, 12] = 49406, torch.randint(0, 49000, (batch, 11), generator=g), 49407
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = None
if mode != "baseline":
    result = train_step(model, ClipLoss(), images, tokens, opt, micro_batch=micro if mode == "cache" else None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": peak / 1024, "before_step_mib": base / 1024, "loss": result.loss if result else None}))
"""


def measure(batch: int, micro: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(batch), str(micro), mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--micro", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    base = measure(args.batch, args.micro, "baseline")
    rows = []
    for mode, label in (("full", "one pass, full batch"), ("cache", f"gradient cache, micro-batch {args.micro}")):
        r = measure(args.batch, args.micro, mode)
        rows.append({"step": label, "peak RSS MiB": r["peak_mib"], "step overhead MiB": r["peak_mib"] - base["peak_mib"], "loss": r["loss"]})
    rows.append({"step": "ratio (full / cache), overhead", "peak RSS MiB": rows[0]["peak RSS MiB"] / rows[1]["peak RSS MiB"],
                 "step overhead MiB": rows[0]["step overhead MiB"] / max(1e-9, rows[1]["step overhead MiB"]), "loss": None})  # fmt: skip
    print_table(f"Peak memory, tiny-vit, batch {args.batch} (model + data alone: {base['peak_mib']:.0f} MiB)", rows)
    print("results:", write_results("grad_cache_memory", rows, args.out, batch=args.batch, micro=args.micro, baseline_mib=base["peak_mib"]))


if __name__ == "__main__":
    main()
