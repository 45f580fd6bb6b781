"""The evaluation tasks as the CLI runs them: load a model and data, embed once, score, and
write results in CLIP_benchmark's JSON layout plus a markdown table and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.io import atomic_path
from ..errors import DataError
from .eval_data import EvalData, load_eval_data
from .features import embed_captions, embed_pil_images
from .templates import load_templates

__all__ = ["TASKS", "run_eval", "evaluate_zeroshot_data", "evaluate_retrieval_data", "evaluate_linear_probe_data"]

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
         "linear-probe": "linear_probe", "shift": "style_shift"}  # fmt: skip


def _features(model, preprocess, data: EvalData, cache: dict) -> torch.Tensor:
    # Embedding dominates the cost: every task on the same data reuses one pass.
    key = (id(model), data.name, len(data.images))
    if key not in cache:
        cache[key] = embed_pil_images(model, data.images, preprocess)
    return cache[key]


def evaluate_zeroshot_data(model, preprocess, data: EvalData, templates: list[str], cache: dict | None = None) -> dict:
    from .zeroshot import classification_metrics, zero_shot_classifier

    if not data.labels:
        raise DataError(f"{data.name} has no labels; zero-shot classification needs a label per image")
    feats = _features(model, preprocess, data, {} if cache is None else cache)
    logits = feats @ zero_shot_classifier(model, data.classnames, templates)
    return classification_metrics(logits, torch.tensor(data.labels), len(data.classnames))


def evaluate_retrieval_data(model, preprocess, data: EvalData, cache: dict | None = None) -> dict:
    from .retrieval import retrieval_metrics

    if not data.captions:
        raise DataError(f"{data.name} has no captions; retrieval needs captions per image")
    feats = _features(model, preprocess, data, {} if cache is None else cache)
    flat = [c for caps in data.captions for c in caps]
    owner = [i for i, caps in enumerate(data.captions) for _ in caps]
    return retrieval_metrics(feats, embed_captions(model, flat), owner)


def evaluate_linear_probe_data(model, preprocess, data: EvalData, test_fraction: float = 0.3, seed: int = 0,
                               cache: dict | None = None) -> dict:  # fmt: skip
    from .linear_probe import linear_probe

    feats = _features(model, preprocess, data, {} if cache is None else cache)
    labels = torch.tensor(data.labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return linear_probe(feats[train], labels[train], feats[test], labels[test], seed=seed)


def run_eval(task: str, model_spec: str, data_spec: str, out_dir: Path, *, templates: str = "simple",
             split: str = "heldout") -> dict[str, Any]:  # fmt: skip
    from ..checkpoint import load

    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    model, preprocess = load(model_spec)
    if task == "shift":
        metrics: dict[str, Any] = {"styles": _shift(model, preprocess, data_spec, load_templates(templates))}
        name = Path(data_spec).name
    else:
        data = load_eval_data(data_spec, split)
        name = data.name
        if task == "zeroshot":
            metrics = evaluate_zeroshot_data(model, preprocess, data, load_templates(templates))
        elif task == "retrieval":
            metrics = evaluate_retrieval_data(model, preprocess, data)
        else:
            metrics = evaluate_linear_probe_data(model, preprocess, data)
    result = {"dataset": name, "model": model_spec, "pretrained": model_spec, "task": TASKS[task], "language": "en",
              "metrics": {k: v for k, v in metrics.items() if k not in ("confusion_matrix", "per_class_accuracy")}}  # fmt: skip
    _write_outputs(out_dir, result, metrics, data.classnames if task == "zeroshot" else None)
    return result


def _shift(model, preprocess, data_spec: str, templates: list[str]) -> list[dict]:
    from .shift import render_styles, shift_eval

    data = load_eval_data(data_spec, "train")
    chars, images, concepts, seen = [], [], [], set()
    for key, opener, label in sorted(zip(data.keys, data.images, data.labels), key=lambda t: len(t[0])):
        concept = data.classnames[label]
        if concept in seen:  # one rendering per concept: the base emoji, without skin tones
            continue
        seen.add(concept)
        try:
            chars.append("".join(chr(int(h, 16)) for h in key.split("-")))
        except ValueError:
            raise DataError(f"{data_spec}: keys are not emoji code points; style shift needs an OpenMoji data set") from None
        images.append(opener())
        concepts.append(concept)
    styled, keep = render_styles(chars, images, model.image_size)
    return shift_eval(model, preprocess, styled, [concepts[i] for i in keep], templates)


def _write_outputs(out_dir: Path, result: dict, metrics: dict, classnames: list[str] | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['task']}_{result['dataset']}"
    with atomic_path(out_dir / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    with atomic_path(out_dir / f"{stem}.md") as tmp:
        tmp.write_text(_markdown(result))
    if classnames is not None:
        from .report import plot_confusion, plot_per_class

        plot_per_class(out_dir / f"{stem}_per_class.png", classnames, metrics["per_class_accuracy"])
        plot_confusion(out_dir / f"{stem}_confusion.png", classnames, metrics["confusion_matrix"])


def _markdown(result: dict) -> str:
    lines = [f"# {result['task']} — {result['dataset']} — {result['model']}", "", "| metric | value |", "|---|---|"]
    for key, value in result["metrics"].items():
        if isinstance(value, float):
            lines.append(f"| {key} | {value:.4f} |")
        elif key == "styles":
            lines = lines[:2] + ["| style | top-1 | top-5 | drop in top-1 |", "|---|---|---|---|"]
            lines += [f"| {r['style']} | {r['acc1']:.1%} | {r['acc5']:.1%} | {r['drop_acc1']:+.1%} |" for r in value]
    return "\n".join(lines) + "\n"
