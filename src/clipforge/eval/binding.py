"""Fine-grained probe: attribute binding. Two shapes of two colours ("a red circle and a blue
square"); the model must prefer the true caption to the one with the colours swapped ("a blue
circle and a red square"). Both captions name the same words, so only the pairing tells them
apart: a bag of features scores them alike, and CLIP-style models are known to sit near chance
here (Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words").

Two controls on the same images show what the model does see: colours alone ("red and blue
shapes" vs one colour replaced by an absent one) and shapes alone ("a circle and a square" vs
one replaced). Binding failing while both controls pass is the signature of the failure.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..models.clip import CLIP
from .features import embed_captions, embed_pil_images
from .probe_report import (
    markdown_table,
    plot_bars,
    probe_result,
    wilson_interval,
    write_probe,
)
from .shapes import COLOURS, SHAPES, Shape, draw_shapes

__all__ = ["TASKS", "BindingTrial", "binding_trials", "binding_eval", "run_binding"]

TASKS = ("colour", "shape", "binding")


class BindingTrial:
    """One picture of two shapes and, per task, (true caption, false caption)."""

    def __init__(self, shapes: list[Shape], absent_colour: str, absent_kind: str) -> None:
        a, b = shapes
        self.shapes = shapes
        self.captions = {
            "colour": (f"{a.colour} and {b.colour} shapes", f"{a.colour} and {absent_colour} shapes"),
            "shape": (f"a {a.kind} and a {b.kind}", f"a {a.kind} and a {absent_kind}"),
            "binding": (f"a {a.colour} {a.kind} and a {b.colour} {b.kind}", f"a {b.colour} {a.kind} and a {a.colour} {b.kind}"),
        }


def binding_trials(n: int = 120, seed: int = 0) -> list[BindingTrial]:
    """``n`` pictures: two distinct kinds in two distinct colours, in two random cells."""
    rng = random.Random(seed)
    trials = []
    for _ in range(n):
        kinds = rng.sample(SHAPES, 3)  # two drawn, the third is the shape control's decoy
        colours = rng.sample(list(COLOURS), 3)
        cells = sorted(rng.sample(range(9), 2))
        shapes = [Shape(kinds[0], colours[0], cells[0]), Shape(kinds[1], colours[1], cells[1])]
        rng.shuffle(shapes)  # which one the caption names first
        trials.append(BindingTrial(shapes, colours[2], kinds[2]))
    return trials


@torch.no_grad()
def binding_eval(model: CLIP, preprocess: Callable, trials: Sequence[BindingTrial],
                 images: Sequence[Image.Image]) -> dict:  # fmt: skip
    """Per task: how often the true caption scores above the false one (chance 0.5)."""
    feats = embed_pil_images(model, images, preprocess)  # (n, dim)
    out: dict = {"chance": 0.5, "trials": len(trials)}
    for task in TASKS:
        true = embed_captions(model, [t.captions[task][0] for t in trials])  # (n, dim)
        false = embed_captions(model, [t.captions[task][1] for t in trials])
        wins = (F.cosine_similarity(feats, true) > F.cosine_similarity(feats, false)).sum().item()
        out[f"{task}_acc"] = wins / len(trials)
        out[f"{task}_ci95"] = list(wilson_interval(int(wins), len(trials)))
    return out


def run_binding(model_spec: str, out_dir: Path, *, trials: int = 120, seed: int = 0) -> dict:
    """Load the model, draw the pictures, probe, write JSON, markdown and a bar plot."""
    from ..checkpoint import load

    model, preprocess = load(model_spec)
    made = binding_trials(trials, seed)
    rng = random.Random(seed)
    images = [draw_shapes(t.shapes, max(96, model.image_size), rng) for t in made]
    metrics = binding_eval(model, preprocess, made, images)
    result = probe_result("binding", "shapes-2", model_spec, metrics)
    rows = [(task, metrics[f"{task}_acc"], f"{metrics[f'{task}_ci95'][0]:.2f}-{metrics[f'{task}_ci95'][1]:.2f}", 0.5,
             " / ".join(made[0].captions[task])) for task in TASKS]  # fmt: skip
    markdown = markdown_table(["task", "accuracy", "95% CI", "chance", "example (true / false)"], rows)
    plot = lambda p: plot_bars(p, list(TASKS), [metrics[f"{t}_acc"] for t in TASKS], chance=0.5,
                               errors=[tuple(metrics[f"{t}_ci95"]) for t in TASKS], title="true vs false caption")  # fmt: skip
    write_probe(out_dir, result, markdown, {"tasks": plot})
    return result
