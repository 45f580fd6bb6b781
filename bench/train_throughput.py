"""Training throughput: clipforge vs open_clip, same model shape, data, batch and precision.

Both start from the same weights (ours loaded into open_clip's CLIP) and see the same batches:
random images and real short captions (as in image–caption data). clipforge runs its own
training step (fused QKV + SDPA, text tower trimmed to the longest caption, foreach AdamW with
module-type parameter groups); open_clip runs its model + ClipLoss in a plain AdamW loop.

    python bench/train_throughput.py [--model demo] [--batch 128] [--steps 20] [--out ...]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

CAPTION_WORDS = ["cat", "grinning face", "red heart", "flag of France", "woman surfing", "rocket", "pizza",
                 "thumbs up", "party popper", "sun behind cloud", "person walking facing right"]  # fmt: skip


def make_batches(n: int, batch: int, size: int, context: int, seed: int = 0):
    from clipforge.tokenizer import tokenize

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        captions = [f"an emoji of a {rng.choice(CAPTION_WORDS)}, {rng.choice(['drawn', 'icon', 'sticker'])}" for _ in range(batch)]
        out.append((torch.randn(batch, 3, size, size, generator=g), tokenize(captions, context_length=context, truncate=True)))
    return out


def run_clipforge(model, batches, precision: str):
    from clipforge.losses import ClipLoss
    from clipforge.train.optim import make_optimizer
    from clipforge.train.step import train_step

    opt = make_optimizer(model, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    loss_fn = ClipLoss()
    losses = []
    start = None
    for i, (images, tokens) in enumerate(batches):
        if i == 2:
            start = time.perf_counter()  # two warm-up steps
        losses.append(train_step(model, loss_fn, images, tokens, opt, precision=precision).loss)
    return time.perf_counter() - start, losses


def run_open_clip(model, batches, precision: str):
    from open_clip.loss import ClipLoss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    loss_fn = ClipLoss()
    losses = []
    start = None
    for i, (images, tokens) in enumerate(batches):
        if i == 2:
            start = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            img, txt, scale = model(images, tokens)
            loss = loss_fn(img, txt, scale)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return time.perf_counter() - start, losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import open_clip

    from clipforge.factory import create_model

    rows = []
    for precision in ("fp32", "bf16"):
        ours = create_model(args.model, seed=0).train()
        cfg = ours.config.to_dict()
        theirs = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])
        theirs.load_state_dict(ours.state_dict())
        theirs.train()
        batches = make_batches(args.steps + 2, args.batch, ours.image_size, ours.context_length)
        t_ours, l_ours = run_clipforge(ours, batches, precision)
        t_theirs, l_theirs = run_open_clip(theirs, batches, precision)
        n = args.steps * args.batch
        rows.append({"precision": precision, "clipforge samples/s": n / t_ours, "open_clip samples/s": n / t_theirs,
                     "ratio": t_theirs / t_ours, "clipforge final loss": l_ours[-1], "open_clip final loss": l_theirs[-1]})  # fmt: skip
    print_table(f"Training throughput, model {args.model}, batch {args.batch}, {args.steps} timed steps", rows)
    print("results:", write_results("train_throughput", rows, args.out, model=args.model, batch=args.batch, steps=args.steps))


if __name__ == "__main__":
    main()
