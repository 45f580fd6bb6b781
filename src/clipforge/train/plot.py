"""Training curves as PNG: loss, logit scale, and zero-shot accuracy when it was measured."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint.io import atomic_path
from .loop import read_metrics

__all__ = ["plot_run"]

_CURVES = [("loss", "training loss"), ("logit_scale", "logit scale (1 / temperature)"),
           ("zeroshot_top1", "zero-shot top-1 (held-out concepts)")]  # fmt: skip


def plot_run(run_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    written = []
    for key, title in _CURVES:
        points = [(r["step"], r[key]) for r in rows if key in r]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(*zip(*points), marker="o" if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(run_dir) / f"{key}.png"
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written.append(path)
    return written
