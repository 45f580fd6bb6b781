"""What every probe (bias, counting, binding) writes: CLIP_benchmark-style JSON, a markdown
table and plots, through one function so the layouts agree."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

from ..checkpoint.io import atomic_path

__all__ = ["write_probe", "wilson_interval", "plot_bars", "probe_result", "markdown_table"]


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion: honest at small n, unlike p ± 2 SE."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def probe_result(task: str, dataset: str, model: str, metrics: dict) -> dict:
    """CLIP_benchmark's layout: dataset, model, pretrained, task, language, metrics."""
    return {"dataset": dataset, "model": model, "pretrained": model, "task": task, "language": "en", "metrics": metrics}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows
    ]


def write_probe(out_dir: Path, result: dict, markdown: list[str],
                plots: dict[str, Callable[[Path], None]] | None = None) -> list[Path]:  # fmt: skip
    """OUT/{task}_{dataset}.json and .md, and each plot as OUT/{task}_{dataset}_{name}.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['task']}_{result['dataset']}"
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    title = f"# {result['task']} — {result['dataset']} — {result['model']}"
    with atomic_path(paths[1]) as tmp:
        tmp.write_text("\n".join([title, ""] + markdown) + "\n")
    for name, plot in (plots or {}).items():
        paths.append(out_dir / f"{stem}_{name}.png")
        plot(paths[-1])
    return paths


def plot_bars(path: Path, labels: Sequence[str], values: Sequence[float], *, chance: float | None = None,
              title: str = "", ylabel: str = "accuracy", errors: Sequence[tuple[float, float]] | None = None) -> None:  # fmt: skip
    """One bar per label, with 95 % intervals and a dashed chance line where given."""
    from .report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels) + 1.5), 3.5), dpi=100)
    yerr = None
    if errors is not None:
        yerr = [[v - lo for v, (lo, _) in zip(values, errors)], [hi - v for v, (_, hi) in zip(values, errors)]]
    ax.bar(range(len(labels)), values, yerr=yerr, color="#4c72b0", capsize=3)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center", fontsize=8)
    if chance is not None:
        ax.axhline(chance, ls="--", color="#c44e52", label=f"chance {chance:.2f}")
        ax.legend(fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
