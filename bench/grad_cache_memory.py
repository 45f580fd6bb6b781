"""Peak memory of one training step on a 4,096-sample batch of the tiny model, with and
without the gradient cache (micro-batch 256), in the same run.

Each configuration runs in a fresh process, so one cannot inherit another's allocator pool. On the
CPU the measure is the process's peak resident memory (``getrusage`` max RSS), with a process that
only builds the model and the data as the baseline; on a GPU it is
``torch.cuda.max_memory_allocated`` above what the model and data hold before the step.

    python bench/grad_cache_memory.py [--batch 4096] [--micro 256] [--device cpu|cuda] [--out ...]
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
batch, micro, mode, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(2)
model = create_model("tiny-vit", seed=0, device=device).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
g = torch.Generator().manual_seed(0)
images = torch.randn(batch, 3, 32, 32, generator=g).to(device)
tokens = torch.zeros(batch, 77, dtype=torch.long)
tokens[:, 0], tokens[:, 1:12], tokens[:, 12] = 49406, torch.randint(0, 49000, (batch, 11), generator=g), 49407
tokens = tokens.to(device)
cuda = device.startswith("cuda")
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
before = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = None
if mode != "baseline":
    result = train_step(model, ClipLoss(), images, tokens, opt, micro_batch=micro if mode == "cache" else None)
peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_mib": peak / 2**20, "before_step_mib": before / 2**20, "loss": result.loss if result else None}))
"""


def measure(batch: int, micro: int, mode: str, device: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(batch), str(micro), mode, device], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {mode} configuration failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--micro", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (max_memory_allocated)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    # CPU: a process that stops before the step; GPU: what is allocated just before the step.
    base = measure(args.batch, args.micro, "baseline", args.device)
    base_mib = base["before_step_mib"] if args.device.startswith("cuda") else base["peak_mib"]
    rows = []
    for mode, label in (("full", "one pass, full batch"), ("cache", f"gradient cache, micro-batch {args.micro}")):
        r = measure(args.batch, args.micro, mode, args.device)
        rows.append({"step": label, "peak MiB": r["peak_mib"], "step overhead MiB": r["peak_mib"] - base_mib, "loss": r["loss"]})
    rows.append({"step": "ratio (full / cache)", "peak MiB": rows[0]["peak MiB"] / rows[1]["peak MiB"],
                 "step overhead MiB": rows[0]["step overhead MiB"] / max(1e-9, rows[1]["step overhead MiB"]), "loss": None})  # fmt: skip
    what = "GPU max_memory_allocated" if args.device.startswith("cuda") else "peak RSS"
    print_table(f"{what}, tiny-vit, batch {args.batch} (model + data alone: {base_mib:.0f} MiB)", rows)
    path = write_results("grad_cache_memory", rows, args.out, batch=args.batch, micro=args.micro, device=args.device,
                         measure=what, baseline_mib=base_mib)  # fmt: skip
    print("results:", path)


if __name__ == "__main__":
    main()
