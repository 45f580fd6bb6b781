"""Accuracy for the same wall-clock budget: the demo recipe vs open_clip with a standard recipe.

Same data (OpenMoji, same concept-level split), same machine, same minutes, same evaluation code
(zero-shot with the emoji prompt ensemble, on trained and on held-out concepts):

(a) `clipforge.demo.run_demo` — the demo recipe;
(b) open_clip's `CLIP` of the same width/depth with its defaults (77-token context, QuickGELU
    off, no concept-aware batching), `open_clip.loss.ClipLoss`, AdamW (lr 5e-4, wd 0.2, betas
    0.9/0.98, eps 1e-6), warmup + cosine, bf16 autocast, batch 256, random order, random caption.

    python bench/demo_vs_open_clip.py [--minutes 10] [--out bench/results/demo_vs_open_clip.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402


def train_open_clip(data_dir: Path, minutes: float, batch: int = 256, lr: float = 5e-4, warmup: int = 50):
    import open_clip

    from clipforge.data import load_items
    from clipforge.data.loader import CaptionedImages
    from clipforge.factory import create_model
    from clipforge.transforms import image_transform

    reference = create_model("demo", seed=0).config.to_dict()
    text_cfg = {**reference["text_cfg"], "context_length": 77}  # open_clip's default context
    model = open_clip.model.CLIP(reference["embed_dim"], reference["vision_cfg"], text_cfg, quick_gelu=False).train()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the standard 77-token SimpleTokenizer
    dataset = CaptionedImages(load_items(data_dir), image_transform(48, train=True), seed=0)
    loader_args = dict(batch_size=batch, shuffle=True, drop_last=True, num_workers=1,
                       collate_fn=lambda s: (torch.stack([x[0] for x in s]), tokenizer([x[1] for x in s])))  # fmt: skip
    loss_fn = open_clip.loss.ClipLoss()
    params_decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    params_other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": params_decay, "weight_decay": 0.2}, {"params": params_other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)  # fmt: skip
    start, step, total = time.perf_counter(), 0, None
    while time.perf_counter() - start < minutes * 60:
        dataset.epoch += 1
        for images, tokens in torch.utils.data.DataLoader(dataset, generator=torch.Generator().manual_seed(step), **loader_args):
            elapsed = time.perf_counter() - start
            if elapsed >= minutes * 60:
                break
            if step == 10:
                total = int(minutes * 60 / (elapsed / 10))  # fix the cosine length from the speed
            frac = (step - warmup) / max(1, (total or 10**9) - warmup)
            for g in opt.param_groups:
                g["lr"] = lr * (step + 1) / warmup if step < warmup else 0.5 * lr * (1 + math.cos(math.pi * min(1.0, frac)))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                img, txt, scale = model(images, tokens)
                loss = loss_fn(img, txt, scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
    return model, step


def evaluate_open_clip(model, manifest) -> dict:
    from clipforge.config import CLIPConfig
    from clipforge.demo.evaluate import evaluate_split, load_split
    from clipforge.eval.templates import load_templates
    from clipforge.factory import create_model, create_preprocess

    cfg = create_model("demo").config.to_dict()
    cfg["text_cfg"]["context_length"] = 77
    ours = create_model(CLIPConfig.from_dict(cfg))
    ours.load_state_dict({k: v for k, v in model.state_dict().items() if k != "attn_mask"})
    templates = load_templates("emoji")
    return {name: evaluate_split(ours, create_preprocess(ours), load_split(manifest, split), templates)
            for name, split in (("trained", "train"), ("heldout", "heldout"))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from clipforge.checkpoint.pretrained import cache_dir
    from clipforge.datasets import build_dataset
    from clipforge.demo import run_demo

    data_dir = cache_dir() / "datasets" / "openmoji-48"
    manifest = build_dataset("openmoji", data_dir, image_size=48)
    with tempfile.TemporaryDirectory() as tmp:
        run_demo(out=Path(tmp), minutes=args.minutes, data_dir=data_dir)
        ours = json.loads((Path(tmp) / "results.json").read_text())
    theirs_model, theirs_steps = train_open_clip(data_dir, args.minutes)
    theirs = evaluate_open_clip(theirs_model, manifest)
    rows = []
    for key, label in (("acc1", "zero-shot top-1"), ("acc5", "zero-shot top-5")):
        for split, ours_split in (("trained", "trained concepts"), ("heldout", "held-out concepts")):
            a, b = ours["results"][ours_split][key], theirs[split][key]
            rows.append({"metric": f"{label}, {ours_split}", "clipforge demo": a, "open_clip": b, "ratio": a / max(b, 1e-9)})
    rows.append({"metric": "optimiser steps", "clipforge demo": float(ours["run"]["steps"]), "open_clip": float(theirs_steps),
                 "ratio": ours["run"]["steps"] / max(1, theirs_steps)})  # fmt: skip
    print_table(f"Demo recipe vs open_clip, {args.minutes:g} min each, same data and evaluation", rows)
    print("results:", write_results("demo_vs_open_clip", rows, args.out, minutes=args.minutes))


if __name__ == "__main__":
    main()
