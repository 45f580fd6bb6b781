"""Plots of a classification evaluation: per-class accuracy and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint.io import atomic_path

__all__ = ["plot_per_class", "plot_confusion", "pyplot", "save_figure"]

_MAX_CLASSES_SHOWN = 40  # beyond this a bar per class is unreadable: show the worst and best


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def plot_per_class(path: Path, classnames: list[str], accuracy: list[float]) -> None:
    plt = pyplot()
    order = sorted(range(len(classnames)), key=lambda i: accuracy[i])
    if len(order) > _MAX_CLASSES_SHOWN:
        half = _MAX_CLASSES_SHOWN // 2
        order = order[:half] + order[-half:]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(order) + 1), dpi=100)
    ax.barh([classnames[i][:30] for i in order], [accuracy[i] for i in order], color="#4c72b0")
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title("per-class accuracy" + (" (worst and best)" if len(classnames) > _MAX_CLASSES_SHOWN else ""))
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_confusion(path: Path, classnames: list[str], confusion: list[list[int]]) -> None:
    import numpy as np

    plt = pyplot()
    matrix = np.asarray(confusion, dtype=float)
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    if len(classnames) <= 25:
        ax.set_xticks(range(len(classnames)), [c[:15] for c in classnames], rotation=90, fontsize=7)
        ax.set_yticks(range(len(classnames)), [c[:15] for c in classnames], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
