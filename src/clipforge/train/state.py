"""Step-level training checkpoints: atomic, the last N kept, loadable with weights_only=True.

A checkpoint holds what an exact resume needs: model, optimiser, grad scaler, step, data
position (epoch, batch), the total step count the schedule was fixed with, and RNG states.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.io import atomic_path
from ..errors import TrainingError

__all__ = ["TrainState", "save_state", "latest_state", "checkpoint_paths"]

_NAME = re.compile(r"^step-(\d{8})\.pt$")


@dataclass
class TrainState:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    total_steps: int = 0
    skipped_steps: int = 0
    skipped_samples: int = 0


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, newest first."""
    found = [p for p in (run_dir / "checkpoints").glob("step-*.pt") if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)  # type: ignore[union-attr]


def save_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: Any, state: TrainState, keep_last: int) -> Path:  # fmt: skip
    path = run_dir / "checkpoints" / f"step-{state.step:08d}.pt"
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "state": vars(state).copy(),
        "rng": {"torch": torch.random.get_rng_state(), "python": _python_rng()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for old in checkpoint_paths(run_dir)[keep_last:]:
        old.unlink(missing_ok=True)
    return path


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_python_rng(saved: list) -> None:
    version, internal, gauss = saved
    random.setstate((version, tuple(internal), gauss))


def latest_state(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; a truncated newest file (killed mid-write by something
    other than our atomic rename) falls back to the one before."""
    for path in checkpoint_paths(run_dir):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # corrupt or partial: try the previous one
            continue
    return None


def restore(payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: Any) -> TrainState:  # fmt: skip
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if scaler is not None and payload["scaler"]:
            scaler.load_state_dict(payload["scaler"])
        torch.random.set_rng_state(payload["rng"]["torch"])
        _restore_python_rng(payload["rng"]["python"])
        return TrainState(**payload["state"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise TrainingError(
            f"the checkpoint does not match this run ({e}); start a new out_dir or set train.resume=never"
        ) from None
