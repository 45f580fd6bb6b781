"""A wall-clock budget is a budget: the run stops when it is spent, however the pace changes."""

from __future__ import annotations

import time
from pathlib import Path

from clipforge.train import load_run_config, train


def test_max_minutes_stops_the_run_on_time(tmp_path: Path) -> None:
    cfg = load_run_config(None, {"data.train": "synthetic:256", "train.batch_size": 32, "train.steps": 10**6,
                                 "train.max_minutes": 0.2, "train.warmup_steps": 2, "train.checkpoint_every": 10**6,
                                 "out_dir": str(tmp_path)})  # fmt: skip
    start = time.perf_counter()
    result = train(cfg)
    elapsed = time.perf_counter() - start
    assert result.state.step == result.state.total_steps >= 1
    # 12 s of budget; set-up, one step over and the final save on a loaded 2-core machine.
    assert elapsed < 12 + 20
