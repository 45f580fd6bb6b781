"""Step-level training checkpoints: atomic, the last N kept, loadable with weights_only=True.

A checkpoint holds what an exact resume needs: model, optimiser, grad scaler, step (which is
also the schedule's position: the learning rate is a pure function of it), data position
(epoch, batch; when streaming, each worker's stream state), the total step count the schedule
was fixed with, RNG states (torch, numpy, python) and the resolved run config. Only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint.io import atomic_path
from ..errors import TrainingError

__all__ = ["TrainState", "save_state", "latest_state", "checkpoint_paths", "restore", "remove_partial_writes"]

_NAME = re.compile(r"^step-(\d{8})\.pt$")


@dataclass
class TrainState:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    total_steps: int = 0
    skipped_steps: int = 0
    skipped_samples: int = 0
    world_size: int = 1  # the data order depends on it: a resume must use the same
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    samples_by_source: dict[str, int] = field(default_factory=dict)  # streaming: samples trained on
    stream: dict[str, Any] = field(default_factory=dict)  # streaming: the loader position in the epoch


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, newest first."""
    found = [p for p in (run_dir / "checkpoints").glob("step-*.pt") if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)  # type: ignore[union-attr]


def save_state(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: Any, state: TrainState, keep_last: int, config_json: str = "") -> Path:  # fmt: skip
    path = run_dir / "checkpoints" / f"step-{state.step:08d}.pt"
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "state": dataclasses.asdict(state),
        "rng": {"torch": torch.random.get_rng_state(), "numpy": _numpy_rng(), "python": _python_rng()},
        "config": config_json,
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


def _numpy_rng() -> dict[str, Any]:
    # The legacy global generator's state holds a numpy array, which weights_only refuses:
    # keep its key as a tensor and the rest as plain numbers.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def _restore_numpy_rng(saved: dict[str, Any]) -> None:
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state((saved["name"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))


def remove_partial_writes(run_dir: Path) -> int:
    """Delete temp files left by a process killed mid-save (the rename never happened, so the
    previous checkpoint is intact). Returns how many were removed."""
    partial = list((run_dir / "checkpoints").glob(".step-*.pt.*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


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
        _restore_numpy_rng(payload["rng"]["numpy"])
        _restore_python_rng(payload["rng"]["python"])
        return TrainState(**payload["state"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise TrainingError(
            f"the checkpoint does not match this run ({e}); start a new out_dir or set train.resume=never"
        ) from None
