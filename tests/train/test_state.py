"""Step checkpoints: contents, atomicity, keep-last-N, picking the newest valid one, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipforge.errors import TrainingError
from clipforge.train import load_run_config, train
from clipforge.train.state import checkpoint_paths, latest_state


def _config(out: Path, **over):
    base = {"data.train": "synthetic:64", "train.batch_size": 16, "train.steps": 8, "train.checkpoint_every": 4,
            "train.keep_last": 3, "train.warmup_steps": 2, "train.log_every": 1, "train.lr": 0.002, "train.threads": 1, "out_dir": str(out)}  # fmt: skip
    return load_run_config(None, {**base, **over})


def test_checkpoint_holds_everything_a_resume_needs(tmp_path: Path) -> None:
    result = train(_config(tmp_path, **{"train.steps": 12, "train.keep_last": 2}))
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["step-00000012.pt", "step-00000008.pt"]  # last 2 kept
    payload = torch.load(tmp_path / "checkpoints" / "step-00000012.pt", weights_only=True)  # tensors-only
    assert set(payload) >= {"model", "optimizer", "scaler", "state", "rng", "config"}
    assert set(payload["rng"]) == {"torch", "numpy", "python"}
    assert payload["state"]["step"] == 12 and payload["state"]["total_steps"] == 12
    assert payload["state"]["epoch"] == 2 and payload["state"]["batch"] == 4  # 4 batches per epoch
    assert len(payload["optimizer"]["state"]) == sum(len(g["params"]) for g in payload["optimizer"]["param_groups"])
    final = load_file(result.final_weights)
    assert all(torch.equal(final[k], v) for k, v in payload["model"].items())
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))  # no temp files left behind


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path: Path) -> None:
    train(_config(tmp_path))
    newest = tmp_path / "checkpoints" / "step-00000008.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # as if killed mid-write without our rename
    path, payload = latest_state(tmp_path)
    assert path.name == "step-00000004.pt" and payload["state"]["step"] == 4


def test_resume_from_a_partial_write_is_exact(tmp_path: Path) -> None:
    reference = train(_config(tmp_path / "ref"))
    run = tmp_path / "run"
    train(_config(run))
    # Simulate a kill during the step-8 save: the temp file is half written, the rename never
    # happened, and the run had not finished.
    ckpt = run / "checkpoints" / "step-00000008.pt"
    partial = run / "checkpoints" / ".step-00000008.pt.abc123.tmp"
    partial.write_bytes(ckpt.read_bytes()[:5000])
    ckpt.unlink()
    (run / "final.safetensors").unlink()
    resumed = train(_config(run))
    assert not partial.exists()
    assert resumed.state.step == 8 and [r["step"] for r in resumed.history] == list(range(1, 9))
    a, b = load_file(reference.final_weights), load_file(resumed.final_weights)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_run(tmp_path: Path) -> None:
    train(_config(tmp_path, **{"train.steps": 4}))
    with pytest.raises(TrainingError, match=r"train.batch_size=16 but this run has 8"):
        train(_config(tmp_path, **{"train.batch_size": 8, "train.steps": 8}))
    with pytest.raises(TrainingError, match="does not exist"):
        train(_config(tmp_path, **{"train.resume": str(tmp_path / "nope.pt")}))
    with pytest.raises(TrainingError, match="already holds checkpoints"):  # never mixes two runs in one dir
        train(_config(tmp_path, **{"train.batch_size": 8, "train.steps": 2, "train.resume": "never"}))
    fresh = train(_config(tmp_path / "new", **{"train.batch_size": 8, "train.steps": 2, "train.resume": "never"}))
    assert fresh.state.step == 2
