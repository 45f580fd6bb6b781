"""Accuracy for the same wall-clock budget: the demo recipe vs open_clip with a standard recipe.

Same data (OpenMoji, same concept-level split), same machine, same minutes, same evaluation code
(zero-shot with the emoji prompt ensemble, on trained and on held-out concepts):

(a) `clipforge.demo.run_demo` — the demo recipe ("robust": OpenMoji with light style
    augmentation);
(a') the wave-1 recipe (`--recipe openmoji`: OpenMoji only, mild crop), the reference for the
    style-shift goal;
(b) open_clip's `CLIP` of the same width/depth with its defaults (77-token context, QuickGELU
    off, no concept-aware batching), `open_clip.loss.ClipLoss`, AdamW (lr 5e-4, wd 0.2, betas
    0.9/0.98, eps 1e-6), warmup + cosine, batch 256, random order, random caption, on OpenMoji
    (its standard recipe has no clip-art of ours), in the demo's precision (bf16 autocast where the
    CPU has native bf16, else fp32).

Columns: zero-shot top-1/top-5 on trained and held-out concepts, then top-1 on the trained
concepts in each style of ``clipforge eval shift`` (OpenMoji colour font, Noto Color Emoji,
grey-scale, blurred: none of them trained on).

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


def train_open_clip(data_dir: Path, minutes: float, batch: int = 256, lr: float = 5e-4, warmup: int = 50,
                    precision: str = "fp32"):
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
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                img, txt, scale = model(images, tokens)
                loss = loss_fn(img, txt, scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
    return model, step


def evaluate_open_clip(model, manifest, data_dir: Path) -> dict:
    from clipforge.config import CLIPConfig
    from clipforge.demo.evaluate import evaluate_split, load_split
    from clipforge.eval.run import style_shift_rows
    from clipforge.eval.templates import load_templates
    from clipforge.factory import create_model, create_preprocess

    cfg = create_model("demo").config.to_dict()
    cfg["text_cfg"]["context_length"] = 77
    ours = create_model(CLIPConfig.from_dict(cfg))
    ours.load_state_dict({k: v for k, v in model.state_dict().items() if k != "attn_mask"})
    templates = load_templates("emoji")
    out = {name: evaluate_split(ours, create_preprocess(ours), load_split(manifest, split), templates)
           for name, split in (("trained concepts", "train"), ("held-out concepts", "heldout"))}  # fmt: skip
    out["styles"] = style_shift_rows(ours, create_preprocess(ours), str(data_dir), templates)
    return out


def run_ours(recipe: str, minutes: float, data_dir: Path) -> dict:
    from clipforge.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        run_demo(out=Path(tmp), minutes=minutes, data_dir=data_dir, recipe=recipe)
        saved = json.loads((Path(tmp) / "results.json").read_text())
    return {**saved["results"], "styles": saved["style_shift"]["styles"], "steps": saved["run"]["steps"]}


def metric_rows(results: dict[str, dict]) -> list[dict]:
    """One row per metric, one column per contender, and robust / each other contender."""
    rows = []
    for key, label in (("acc1", "zero-shot top-1"), ("acc5", "zero-shot top-5")):
        for split in ("trained concepts", "held-out concepts"):
            rows.append({"metric": f"{label}, {split}", **{n: r[split][key] for n, r in results.items()}})
    for i, style in enumerate(r["style"] for r in next(iter(results.values()))["styles"]):
        rows.append({"metric": f"top-1, trained concepts, {style}", **{n: float(r["styles"][i]["acc1"]) for n, r in results.items()}})
    rows.append({"metric": "optimiser steps", **{n: float(r["steps"]) for n, r in results.items()}})
    for row in rows:
        row["robust / open_clip"] = row[ROBUST] / max(row["open_clip"], 1e-9)
        row["robust / wave 1"] = row[ROBUST] / max(row[WAVE1], 1e-9)
    return rows


ROBUST, WAVE1 = "clipforge robust", "clipforge wave-1 recipe"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from clipforge.checkpoint.pretrained import cache_dir
    from clipforge.datasets import build_dataset
    from clipforge.demo.recipe import demo_precision

    data_dir = cache_dir() / "datasets" / "openmoji-48"
    manifest = build_dataset("openmoji", data_dir, image_size=48)
    results = {ROBUST: run_ours("robust", args.minutes, data_dir), WAVE1: run_ours("openmoji", args.minutes, data_dir)}
    theirs_model, theirs_steps = train_open_clip(data_dir, args.minutes, precision=demo_precision())
    results["open_clip"] = {**evaluate_open_clip(theirs_model, manifest, data_dir), "steps": theirs_steps}
    rows = metric_rows(results)
    print_table(f"Demo recipes vs open_clip, {args.minutes:g} min each, same machine and evaluation", rows)
    print("results:", write_results("demo_vs_open_clip", rows, args.out, minutes=args.minutes, precision=demo_precision()))


if __name__ == "__main__":
    main()
