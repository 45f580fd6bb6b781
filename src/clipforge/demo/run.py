"""`clipforge demo`: build OpenMoji, train the demo recipe for a wall-clock budget, evaluate
zero-shot on trained and held-out concepts, and write a report. Uses the library's own
training and evaluation code."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..checkpoint.pretrained import cache_dir
from ..datasets import build_dataset
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
             limit: int | None = None) -> Path:  # fmt: skip
    """Returns the path of the HTML report. Interrupted, it saves; run it again to resume."""
    data_dir = data_dir or cache_dir() / "datasets" / (f"{data}-48" + (f"-{limit}" if limit else ""))
    _say(f"building (or reusing) the {data} data set in {data_dir}")
    manifest = build_dataset(data, data_dir, image_size=48, limit=limit)
    config = demo_run_config(data_dir, out, minutes, device, threads)
    templates = load_templates("emoji")
    eval_preprocess = create_preprocess(_config(config))
    heldout = load_split(manifest, "heldout")
    _say(f"training `{config.model}` for {minutes:g} min on {manifest.counts['train']:,} images "
         f"({len(manifest.concepts['train']):,} concepts); {len(heldout.classnames)} concepts held out")  # fmt: skip
    started = time.perf_counter()
    result = train(config, eval_fn=heldout_zeroshot_hook(heldout, eval_preprocess, templates))
    train_minutes = (time.perf_counter() - started) / 60
    model = result_model(result.final_weights)
    _say("evaluating")
    splits = {"trained concepts": load_split(manifest, "train"), "held-out concepts": heldout}
    results = {name: evaluate_split(model, eval_preprocess, split, templates) for name, split in splits.items()}
    info = _run_info(config, result, manifest, model, train_minutes)
    report = write_report(out, results, splits, info, plot_run(result.run_dir))
    _print_summary(results, report)
    return report


def _config(config):
    from ..config import apply_overrides
    from ..registry import get_model_config

    return apply_overrides(get_model_config(config.model), config.model_overrides)


def result_model(path: Path | None):
    from ..checkpoint import load

    model, _ = load(path)
    return model


def _run_info(config, result, manifest, model, minutes: float) -> dict[str, Any]:
    return {
        "model": config.model, "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result.state.step, "samples_seen": result.state.step * config.train.batch_size,
        "minutes": minutes, "train_images": manifest.counts["train"],
        "train_concepts": len(manifest.concepts["train"]), "attribution": manifest.attribution,
        "skipped_samples": result.state.skipped_samples, "run_dir": str(result.run_dir),
    }  # fmt: skip


def _say(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold]clipforge demo[/]: {message}")


def _print_summary(results: dict, report: Path) -> None:
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
    console.print(f"report: {report}")
