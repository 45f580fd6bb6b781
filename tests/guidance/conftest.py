"""Two tiny models trained apart (different seeds, different samples of the synthetic shapes),
so one can guide and the other judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipforge.train import load_run_config, train


def _train(out: Path, seed: int) -> Path:
    cfg = load_run_config(None, {"data.train": f"synthetic:{192 + 64 * seed}", "train.batch_size": 32, "train.steps": 40,
                                 "train.warmup_steps": 4, "train.lr": 0.003, "train.seed": seed, "train.threads": 1,
                                 "train.checkpoint_every": 1000, "train.log_every": 1000, "out_dir": str(out)})  # fmt: skip
    return train(cfg).final_weights


@pytest.fixture(scope="session")
def trained_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(guide, judge) checkpoints: tiny-vit trained 40 steps on coloured shapes, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("pair")
    return _train(root / "a", 0), _train(root / "b", 1)
