"""Training throughput: clipforge's training step vs open_clip's model + ClipLoss in a plain
AdamW loop. Same model shape, same initial weights (ours loaded into open_clip's CLIP), same
batches (random images, real short captions as in image–caption data), same batch size,
precision, thread count and number of steps, measured in the same process.

All contenders train side by side, one step each in turn (the order rotating every step), so
bursts of load from other processes on a shared machine fall on all of them alike; each step is
timed alone and the median step time is reported (after 2 warm-up steps). Ablation rows take one lever out of
clipforge's step at a time, to show what moves the number:

- ``no text trim``: the text tower runs all 77 positions (open_clip does) instead of stopping at
  the batch's longest caption (exact: under the causal mask no kept position sees a trimmed one);
- ``fused attention``: torch's fused CPU attention kernel everywhere (clipforge runs short
  sequences' attention as plain matmul-softmax-matmul when training on the CPU, whose backward is
  several times faster there; ``models.layers.attention``);
- ``AdamW foreach`` (clipforge's previous default) / ``AdamW for-loop`` (torch's plain loop):
  the optimiser implementation; clipforge uses torch's fused AdamW kernel;
- ``open_clip, fused AdamW``: the same optimiser lever given to open_clip, for honesty about
  how much of the gap is the optimiser choice rather than the model.

    python bench/train_throughput.py [--model tiny-vit] [--batch 128] [--steps 30] [--out ...]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

CAPTION_WORDS = ["cat", "grinning face", "red heart", "flag of France", "woman surfing", "rocket", "pizza",
                 "thumbs up", "party popper", "sun behind cloud", "person walking facing right"]  # fmt: skip
LR, WD, BETAS, EPS = 1e-4, 0.1, (0.9, 0.98), 1e-6
WARMUP = 2  # untimed steps per run (allocator and kernel caches)


def make_batches(n: int, batch: int, size: int, context: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from clipforge.tokenizer import tokenize

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        captions = [f"an emoji of a {rng.choice(CAPTION_WORDS)}, {rng.choice(['drawn', 'icon', 'sticker'])}" for _ in range(batch)]
        images = torch.randn(batch, 3, size, size, generator=g)  # (batch, 3, H, W)
        out.append((images, tokenize(captions, context_length=context, truncate=True)))  # (batch, context)
    return out


@contextlib.contextmanager
def fused_attention_only() -> Iterator[None]:
    """Ablation only: clipforge's attention takes torch's fused kernel at every length."""
    from clipforge.models import layers

    saved = dict(layers._PLAIN_ATTENTION_MAX_TOKENS)
    layers._PLAIN_ATTENTION_MAX_TOKENS.clear()
    try:
        yield
    finally:
        layers._PLAIN_ATTENTION_MAX_TOKENS.update(saved)


def clipforge_runner(init: dict, arch, precision: str, *, optimizer: str = "default", trim: bool = True,
                     plain_attention: bool = True) -> Callable:  # fmt: skip
    from clipforge.factory import create_model
    from clipforge.losses import ClipLoss
    from clipforge.train.optim import make_optimizer, param_groups
    from clipforge.train.step import train_step

    def start() -> Callable[[torch.Tensor, torch.Tensor], float]:
        model = create_model(arch).train()
        model.load_state_dict(init)
        if not trim:  # ablation only: the tower's own option, bound on this instance
            model.encode_text = functools.partial(type(model).encode_text, model, trim_padding=False)  # type: ignore[method-assign]
        if optimizer == "default":
            opt = make_optimizer(model, LR, WD, BETAS, EPS)
        else:
            flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}}[optimizer]
            opt = torch.optim.AdamW(param_groups(model, WD), lr=LR, betas=BETAS, eps=EPS, **flags)
        loss_fn = ClipLoss()

        def step(images, tokens) -> float:
            with contextlib.nullcontext() if plain_attention else fused_attention_only():
                return train_step(model, loss_fn, images, tokens, opt, precision=precision).loss

        return step

    return start


def open_clip_runner(init: dict, arch, precision: str, fused: bool = False) -> Callable:
    import open_clip
    from open_clip.loss import ClipLoss

    cfg = arch.to_dict()

    def start() -> Callable[[torch.Tensor, torch.Tensor], float]:
        model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])
        model.load_state_dict(init)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, fused=fused or None)
        loss_fn = ClipLoss()

        def step(images, tokens) -> float:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                img, txt, scale = model(images, tokens)
                loss = loss_fn(img, txt, scale)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    return start


def contenders(init: dict, arch, precision: str, ablate: bool) -> dict[str, Callable]:
    runners = {"clipforge": clipforge_runner(init, arch, precision), "open_clip": open_clip_runner(init, arch, precision)}
    if ablate:
        runners["clipforge, no text trim"] = clipforge_runner(init, arch, precision, trim=False)
        runners["clipforge, fused attention"] = clipforge_runner(init, arch, precision, plain_attention=False)
        runners["clipforge, AdamW foreach"] = clipforge_runner(init, arch, precision, optimizer="foreach")
        runners["clipforge, AdamW for-loop"] = clipforge_runner(init, arch, precision, optimizer="for-loop")
        runners["open_clip, fused AdamW"] = open_clip_runner(init, arch, precision, fused=True)
    return runners


def measure(starts: dict[str, Callable], batches) -> dict[str, tuple[float, float]]:
    """name -> (median seconds per timed step, loss of the last step)."""
    steppers = {name: start() for name, start in starts.items()}
    names = list(steppers)
    times: dict[str, list[float]] = {name: [] for name in names}
    losses: dict[str, float] = {}
    for i, (images, tokens) in enumerate(batches):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            tick = time.perf_counter()
            losses[name] = steppers[name](images, tokens)
            if i >= WARMUP:
                times[name].append(time.perf_counter() - tick)
    return {name: (statistics.median(times[name]), losses[name]) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-vit")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per contender (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, the same for both")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--no-ablate", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from clipforge.factory import create_model

    seed_model = create_model(args.model, seed=0)
    arch, init = seed_model.config, {k: v.clone() for k, v in seed_model.state_dict().items()}
    batches = make_batches(args.steps + WARMUP, args.batch, seed_model.image_size, seed_model.context_length)
    rows = []
    for precision in args.precision:
        results = measure(contenders(init, arch, precision, not args.no_ablate), batches)
        base_s, base_loss = results["open_clip"]
        for name, (seconds, loss) in results.items():
            rows.append({"precision": precision, "contender": name, "samples/s": args.batch / seconds,
                         "ratio vs open_clip": base_s / seconds, f"loss after {args.steps + WARMUP} steps": loss,
                         "loss diff vs open_clip": abs(loss - base_loss)})  # fmt: skip
    print_table(f"Training throughput, model {args.model}, batch {args.batch}, {args.steps} timed steps, "
                f"{args.threads} threads, median step", rows)  # fmt: skip
    print("results:", write_results("train_throughput", rows, args.out, model=args.model, batch=args.batch,
                                    steps=args.steps, warmup_steps=WARMUP))  # fmt: skip


if __name__ == "__main__":
    main()
