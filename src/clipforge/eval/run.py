"""The evaluation tasks as the CLI runs them: load a model and data, embed once, score, and
write results in CLIP_benchmark's JSON layout plus a markdown table and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..checkpoint.io import atomic_path
from ..errors import DataError
from .eval_data import EvalData, load_eval_data
from .features import embed_captions, embed_pil_images
from .templates import load_templates

__all__ = ["TASKS", "run_eval", "style_shift_rows", "style_shift_inputs", "read_shift_point", "evaluate_zeroshot_data", "evaluate_retrieval_data", "evaluate_linear_probe_data"]

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
             split: str = "heldout", baselines: Sequence[Path] = ()) -> dict[str, Any]:  # fmt: skip
    """``baselines``: earlier style-shift results (this task's JSON) whose (training-style,
    other-style) accuracies define the trend effective robustness is measured against."""
    from ..checkpoint import load

    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    reference = [read_shift_point(p) for p in baselines]  # bad files fail before the model loads
    model, preprocess = load(model_spec)
    if task == "shift":
        from .shift import robustness_summary

        rows = style_shift_rows(model, preprocess, data_spec, load_templates(templates))
        metrics: dict[str, Any] = {"styles": rows, **robustness_summary(rows, reference)}
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
    if task == "shift":
        from .shift import plot_shift

        plot_shift(out_dir / f"{TASKS[task]}_{name}.png", metrics["styles"], reference)
    return result


def read_shift_point(path: Path) -> tuple[float, float]:
    """(training-style, other-style) top-1 of a style-shift result file, for a baseline."""
    from .shift import shift_points

    try:
        styles = json.loads(Path(path).read_text())["metrics"]["styles"]
        return shift_points(styles)
    except FileNotFoundError:
        raise DataError(f"baseline {path} does not exist; give a style_shift_*.json written by clipforge eval shift") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DataError(f"baseline {path} is not a style-shift result (a style_shift_*.json written by "
                        "clipforge eval shift)") from None  # fmt: skip


def style_shift_rows(model, preprocess, data_spec: str, templates: list[str]) -> list[dict]:
    """``shift_eval`` rows for an OpenMoji data set: one image per concept of its training split
    (the base emoji, without skin tones), rendered in every available style."""
    from .shift import shift_eval

    styled, concepts = style_shift_inputs(data_spec, model.image_size)
    return shift_eval(model, preprocess, styled, concepts, templates)


def style_shift_inputs(data_spec: str, size: int) -> tuple[dict[str, list], list[str]]:
    """(style -> images, concept per image): render once, score many models."""
    from .shift import render_styles

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
    styled, keep = render_styles(chars, images, size)
    return styled, [concepts[i] for i in keep]


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
    lines = [f"# {result['task']} — {result['dataset']} — {result['model']}", ""]
    metrics = result["metrics"]
    if "styles" in metrics:
        lines += ["| style | top-1 | top-5 | drop in top-1 |", "|---|---|---|---|"]
        lines += [f"| {r['style']} | {r['acc1']:.1%} | {r['acc5']:.1%} | {r['drop_acc1']:+.1%} |" for r in metrics["styles"]]
        lines.append("")
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items() if isinstance(value, float)]
    return "\n".join(lines) + "\n"
