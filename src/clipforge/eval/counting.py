"""Counting probe: generated pictures of 1-6 shapes, classified zero-shot among "a picture of
N shapes". CLIP is known to fail at this (Radford et al. 2021, section 3.1.5 and table 9: near
chance on CLEVR counts): a contrastive caption seldom hinges on the exact number of things, so
the image tower has little reason to keep it. The report puts chance beside every accuracy.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from ..models.clip import CLIP
from .features import embed_pil_images
from .probe_report import (
    markdown_table,
    plot_bars,
    probe_result,
    wilson_interval,
    write_probe,
)
from .shapes import draw_shapes, random_layout
from .zeroshot import classification_metrics, zero_shot_classifier

__all__ = ["COUNTS", "NUMBER_WORDS", "COUNT_TEMPLATES", "counting_images", "count_classnames", "counting_eval", "run_counting"]

COUNTS = (1, 2, 3, 4, 5, 6)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
COUNT_TEMPLATES = ["a picture of {}.", "{}", "an image of {}.", "a drawing of {}."]


def count_classnames(counts: Sequence[int] = COUNTS) -> list[str]:
    return [f"{NUMBER_WORDS[n]} shape" + ("s" if n > 1 else "") for n in counts]


def counting_images(per_count: int = 30, counts: Sequence[int] = COUNTS, size: int = 96,
                    seed: int = 0) -> tuple[list[Image.Image], list[int]]:  # fmt: skip
    """``per_count`` pictures of each count: random shapes, colours and cells."""
    rng = random.Random(seed)
    images, labels = [], []
    for n in counts:
        for _ in range(per_count):
            images.append(draw_shapes(random_layout(n, rng), size, rng))
            labels.append(n)
    return images, labels


@torch.no_grad()
def counting_eval(model: CLIP, preprocess: Callable, images: Sequence[Image.Image], labels: Sequence[int],
                  counts: Sequence[int] = COUNTS, templates: Sequence[str] = COUNT_TEMPLATES) -> dict:  # fmt: skip
    """Top-1 over the counts, per count, the counts predicted, the mean error in objects."""
    index = {n: i for i, n in enumerate(counts)}
    target = torch.tensor([index[n] for n in labels])
    logits = embed_pil_images(model, images, preprocess) @ zero_shot_classifier(model, count_classnames(counts), templates)
    m = classification_metrics(logits, target, len(counts))
    predicted = torch.tensor(counts)[logits.argmax(dim=1)]
    hits = [m["confusion_matrix"][i][i] for i in range(len(counts))]
    support = [sum(row) for row in m["confusion_matrix"]]
    return {
        "acc1": m["acc1"], "chance_acc1": 1 / len(counts),
        "mean_abs_count_error": (predicted - torch.tensor(list(labels))).abs().float().mean().item(),
        "per_count": [{"count": n, "acc1": h / max(s, 1), "ci95": list(wilson_interval(h, s)), "n": s}
                      for n, h, s in zip(counts, hits, support)],
        "predicted": {str(n): int((predicted == n).sum()) for n in counts},
        "confusion_matrix": m["confusion_matrix"],
    }  # fmt: skip


def run_counting(model_spec: str, out_dir: Path, *, per_count: int = 30, seed: int = 0) -> dict:
    """Load the model, draw the pictures, probe, write JSON, markdown and a bar plot."""
    from ..checkpoint import load

    model, preprocess = load(model_spec)
    images, labels = counting_images(per_count, seed=seed, size=max(96, model.image_size))
    metrics = counting_eval(model, preprocess, images, labels)
    result = probe_result("counting", "shapes-1-6", model_spec, metrics)
    rows = [(r["count"], r["n"], r["acc1"], f"{r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}", metrics["predicted"][str(r["count"])])
            for r in metrics["per_count"]]  # fmt: skip
    markdown = markdown_table(["objects", "images", "acc1", "95% CI", "times predicted"], rows)
    markdown += ["", (f"top-1 {metrics['acc1']:.3f} against chance {metrics['chance_acc1']:.3f}; "
                      f"mean error {metrics['mean_abs_count_error']:.2f} objects")]  # fmt: skip
    per = metrics["per_count"]
    plot = lambda p: plot_bars(p, [str(r["count"]) for r in per], [r["acc1"] for r in per], chance=metrics["chance_acc1"],
                               errors=[tuple(r["ci95"]) for r in per], title="zero-shot counting: 'a picture of N shapes'")  # fmt: skip
    write_probe(out_dir, result, markdown, {"per_count": plot})
    return result
