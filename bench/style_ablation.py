"""Which part of a recipe buys robustness to style shift: one row per change.

Every row trains the demo model from the same seed for the same number of optimiser steps (not
minutes: a fixed step budget makes the rows comparable whatever else the machine runs; the
augmentations run in the DataLoader worker, and each row's seconds per step is reported so a
costly one shows), then measures zero-shot top-1 on held-out OpenMoji concepts and on the trained
concepts in every drawing style of ``clipforge eval shift``:

- ``openmoji (wave 1)``: OpenMoji only, open_clip's mild crop: the wave-1 recipe;
- ``robust (the demo's)``: OpenMoji with the demo's light style augmentation (``ROBUST_STYLE``);
- ``robust - OP``: the same with one of its operations off, to read each one's share;
  ``robust + OP``: one more operation on (probability 0.2); ``robust + OP x2``: one of its
  operations twice as often;
- ``openmoji + OP``: one style operation alone, often (probability 0.5; ``crop`` = random
  resized crops of 60-100 % of the area), against the wave-1 row;
- ``mix``: OpenMoji + Tux Paint + Openclipart by weight, no style augmentation; ``mix + OP``
  one operation on; ``mix + light style``: the demo's "mix" recipe;
- ``mix + heavy style``: every operation, 10-50 % each, and crops down to 60 %: the first
  robust recipe, which lost accuracy everywhere.

Rows are written to ``--out`` as they finish, so a long run can be read while it goes.

    python bench/style_ablation.py [--steps 80] [--rows "openmoji (wave 1),robust (the demo's)"] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402

from clipforge.style import STYLE_OPS, StyleConfig  # noqa: E402
from clipforge.demo.recipe import ROBUST_STYLE  # noqa: E402

SINGLE_P = 0.5
ADDED_P = 0.2  # an operation added to the robust recipe
HEAVY_STYLE = StyleConfig(colour_jitter=0.3, grayscale=0.1, outline=0.15, posterize=0.1, padding=0.5,
                          background=0.2, blur_sharpen=0.2, crop_scale=(0.6, 1.0))  # fmt: skip


def row_specs() -> dict[str, tuple[str, StyleConfig | None]]:
    """row name -> (recipe, style or None for the recipe's own)."""
    rows: dict[str, tuple[str, StyleConfig | None]] = {
        "openmoji (wave 1)": ("openmoji", None),
        "robust (the demo's)": ("robust", None),
    }
    for op in ROBUST_STYLE.active:
        rows[f"robust - {op}"] = ("robust", dataclasses.replace(ROBUST_STYLE, **{op: 0.0}))
        rows[f"robust + {op} x2"] = ("robust", dataclasses.replace(ROBUST_STYLE, **{op: min(1.0, 2 * getattr(ROBUST_STYLE, op))}))
    for op in STYLE_OPS:
        if op not in ROBUST_STYLE.active:
            rows[f"robust + {op}"] = ("robust", dataclasses.replace(ROBUST_STYLE, **{op: ADDED_P}))
    for op in STYLE_OPS:
        rows[f"openmoji + {op}"] = ("openmoji", StyleConfig(**{op: SINGLE_P}))
    rows["openmoji + crop"] = ("openmoji", StyleConfig(crop_scale=(0.6, 1.0)))
    rows["mix"] = ("mix", StyleConfig())
    for op in STYLE_OPS:
        rows[f"mix + {op}"] = ("mix", StyleConfig(**{op: SINGLE_P}))
    rows["mix + light style"] = ("mix", None)
    rows["mix + heavy style"] = ("mix", HEAVY_STYLE)
    return rows


def train_row(recipe: str, style: StyleConfig | None, steps: int, data_dir: Path, clipart: dict[str, Path],
              out: Path) -> tuple[Path, float]:  # fmt: skip
    from clipforge.demo.recipe import demo_run_config
    from clipforge.train import train

    config = demo_run_config(data_dir, out, minutes=0, recipe=recipe, clipart=clipart, style=style)
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, steps=steps, max_minutes=None, eval_every=10**9, checkpoint_every=10**9, log_every=10**9))  # fmt: skip
    start = time.perf_counter()
    result = train(config)
    return result.final_weights, (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)

    from clipforge.checkpoint import load
    from clipforge.demo.evaluate import evaluate_split, load_split
    from clipforge.demo.run import _clipart_sources, _dataset_dir
    from clipforge.datasets import build_dataset
    from clipforge.eval.run import style_shift_inputs
    from clipforge.eval.shift import robustness_summary, shift_eval
    from clipforge.eval.templates import load_templates
    from clipforge.factory import create_preprocess

    data_dir = _dataset_dir("openmoji", None)
    manifest = build_dataset("openmoji", data_dir, image_size=48)
    clipart = _clipart_sources(None)
    templates = load_templates("emoji")
    heldout = load_split(manifest, "heldout")
    styled, concepts = style_shift_inputs(str(data_dir), 48)
    specs = row_specs()
    names = args.rows.split(",") if args.rows else list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; rows: {', '.join(specs)}")
    rows = []
    for name in names:
        recipe, style = specs[name]
        with tempfile.TemporaryDirectory() as tmp:
            weights, s_per_step = train_row(recipe, style, args.steps, data_dir, clipart, Path(tmp))
            model, _ = load(weights)
        preprocess = create_preprocess(model)
        shift = shift_eval(model, preprocess, styled, concepts, templates)
        summary = robustness_summary(shift)
        row = {"row": name, "held-out concepts top-1": evaluate_split(model, preprocess, heldout, templates)["acc1"]}
        row.update({str(r["style"]).replace(" (training style)", ""): float(r["acc1"]) for r in shift})
        row["other styles mean"] = summary["other_styles_acc1"]
        row["s/step"] = s_per_step
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
        path = write_results("style_ablation", rows, args.out, steps=args.steps, single_op_probability=SINGLE_P,
                             robust_style=dataclasses.asdict(ROBUST_STYLE), heavy_style=dataclasses.asdict(HEAVY_STYLE),
                             clipart_sources=sorted(clipart))  # fmt: skip
    print_table(f"Style ablation: {args.steps} steps each, same seed; zero-shot top-1", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
