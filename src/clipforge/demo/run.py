"""`clipforge demo`: build OpenMoji, train the demo recipe for a wall-clock budget, evaluate
zero-shot on trained and held-out concepts, and write a report. Uses the library's own
training and evaluation code."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..checkpoint.pretrained import cache_dir
from ..style import StyleConfig
from ..datasets import build_dataset
from ..errors import DataError
from ..eval.templates import load_templates
from ..factory import create_preprocess
from ..train import train
from ..train.plot import plot_run
from .evaluate import evaluate_split, heldout_zeroshot_hook, load_split
from .recipe import demo_run_config
from .report import summary_rows, write_report

__all__ = ["run_demo"]


def run_demo(out: Path = Path("demo_out"), minutes: float = 10.0, data: str = "openmoji",
             data_dir: Path | None = None, device: str = "cpu", threads: int | None = None,
             limit: int | None = None, recipe: str = "robust", style: StyleConfig | None = None) -> Path:  # fmt: skip
    """Returns the path of the HTML report. Interrupted, it saves; run it again to resume.
    ``style`` replaces the recipe's augmentation (for ablations)."""
    data_dir = data_dir or _dataset_dir(data, limit)
    _say(f"building (or reusing) the {data} data set in {data_dir}")
    manifest = build_dataset(data, data_dir, image_size=48, limit=limit)
    clipart = _clipart_sources(limit) if recipe == "mix" and data == "openmoji" else {}
    config = demo_run_config(data_dir, out, minutes, device, threads, recipe=recipe, clipart=clipart, style=style)
    templates = load_templates("emoji")
    eval_preprocess = create_preprocess(_config(config))
    heldout = load_split(manifest, "heldout")
    _say(f"training `{config.model}` ({recipe} recipe) for {minutes:g} min on {manifest.counts['train']:,} {data} images "
         f"({len(manifest.concepts['train']):,} concepts){_sources_note(clipart)}; "
         f"{len(heldout.classnames)} concepts held out")  # fmt: skip
    started = time.perf_counter()
    result = train(config, eval_fn=heldout_zeroshot_hook(heldout, eval_preprocess, templates))
    train_minutes = (time.perf_counter() - started) / 60
    model = result_model(result.final_weights)
    _say("evaluating")
    splits = {"trained concepts": load_split(manifest, "train"), "held-out concepts": heldout}
    results = {name: evaluate_split(model, eval_preprocess, split, templates) for name, split in splits.items()}
    shift = _style_shift(model, eval_preprocess, data_dir, templates) if data == "openmoji" else None
    info = _run_info(config, result, manifest, model, train_minutes, recipe, clipart)
    report = write_report(out, results, splits, info, plot_run(result.run_dir), shift)
    _print_summary(results, shift, report)
    return report


def _dataset_dir(name: str, limit: int | None) -> Path:
    return cache_dir() / "datasets" / (f"{name}-48" + (f"-{limit}" if limit else ""))


def _clipart_sources(limit: int | None) -> dict[str, Path]:
    """The clip-art sets whose Debian packages are installed, built (or reused) at 48 px."""
    out = {}
    for name in ("tuxpaint", "openclipart"):
        try:
            build_dataset(name, _dataset_dir(name, limit), image_size=48, limit=limit)
            out[name] = _dataset_dir(name, limit)
        except DataError as e:
            _say(f"{name} left out of the mix: {e}")
    return out


def _sources_note(clipart: dict[str, Path]) -> str:
    return f", mixed with {' and '.join(clipart)} clip-art" if clipart else ""


def _style_shift(model, preprocess, data_dir: Path, templates: list[str]) -> dict[str, Any] | None:
    from ..eval.run import style_shift_rows
    from ..eval.shift import robustness_summary

    try:
        rows = style_shift_rows(model, preprocess, str(data_dir), templates)
    except DataError as e:  # the emoji font is missing: the report says so instead
        _say(f"style-shift table left out: {e}")
        return None
    return {"styles": rows, **robustness_summary(rows)}


def _config(config):
    from ..config import apply_overrides
    from ..registry import get_model_config

    return apply_overrides(get_model_config(config.model), config.model_overrides)


def result_model(path: Path | None):
    from ..checkpoint import load

    model, _ = load(path)
    return model


def _run_info(config, result, manifest, model, minutes: float, recipe: str, clipart: dict[str, Path]) -> dict[str, Any]:
    return {
        "model": config.model, "recipe": recipe, "clipart_sources": sorted(clipart),
        "samples_by_source": {Path(k).name: v for k, v in result.state.samples_by_source.items()},
        "style": config.data.style.__dict__ | {"crop_scale": list(config.data.style.crop_scale)},
        "precision": config.train.precision, "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result.state.step, "samples_seen": result.state.step * config.train.batch_size,
        "minutes": minutes, "train_images": manifest.counts["train"],
        "train_concepts": len(manifest.concepts["train"]), "attribution": manifest.attribution,
        "skipped_samples": result.state.skipped_samples, "run_dir": str(result.run_dir),
    }  # fmt: skip


def _say(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold]clipforge demo[/]: {message}")


def _print_summary(results: dict, shift: dict | None, report: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = summary_rows(results)
    table = Table(title="clipforge demo: zero-shot and retrieval")
    for col in rows[0]:
        table.add_column(col, justify="right" if col != "metric" else "left")
    for row in rows[1:]:
        table.add_row(*row)
    console = Console()
    console.print(table)
    if shift is not None:
        styles = Table(title="zero-shot top-1 by drawing style (trained concepts)")
        for col in ("style", "top-1", "change"):
            styles.add_column(col, justify="left" if col == "style" else "right")
        for row in shift["styles"]:
            styles.add_row(str(row["style"]), f"{row['acc1']:.1%}", f"{row['acc1'] - shift['training_style_acc1']:+.1%}")
        console.print(styles)
    console.print(f"report: {report}")
