"""The training loop in one process: errors, evaluation hook, epochs, metrics, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipforge.errors import DataError
from clipforge.train import TrainingInterrupted, load_run_config, train


def _config(out: Path, **over):
    base = {"data.train": "synthetic:64", "train.batch_size": 16, "train.steps": 6, "train.warmup_steps": 2,
            "train.lr": 0.002, "train.log_every": 1, "train.checkpoint_every": 100, "train.threads": 1,
            "out_dir": str(out)}  # fmt: skip
    return load_run_config(None, {**base, **over})


def test_clear_errors_for_bad_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        train(_config(tmp_path, **{"data.train": str(tmp_path / "none.csv")}))
    with pytest.raises(DataError, match="larger than the data set"):
        train(_config(tmp_path, **{"data.train": "synthetic:8"}))
    empty = tmp_path / "empty.csv"
    empty.write_text("image,caption\n")
    with pytest.raises(DataError, match="no image"):
        train(_config(tmp_path, **{"data.train": str(empty)}))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_cli_reports_user_errors_in_one_line(tmp_path: Path) -> None:
    for pair, expected in [("train.batchsize=3", "valid keys here"), (f"data.train={tmp_path}/x.csv", "does not exist")]:
        proc = subprocess.run([sys.executable, "-m", "clipforge", "train", "--set", pair, "--set", f"out_dir={tmp_path}"],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_metrics_rows_and_default_zeroshot_evaluation(tmp_path: Path) -> None:
    result = train(_config(tmp_path, **{"data.val": "synthetic:24", "train.eval_every": 4, "train.log_every": 2}))
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == result.history and [r["step"] for r in rows] == [2, 4, 6]
    assert {"step", "loss", "lr", "logit_scale", "samples_per_s", "skipped", "grad_norm"} <= set(rows[0])
    assert [("zeroshot_top1" in r) for r in rows] == [False, True, True]  # every 4 steps, and at the end
    assert all(0.0 <= r["zeroshot_top1"] <= 1.0 for r in rows if "zeroshot_top1" in r)
    assert rows[0]["lr"] == pytest.approx(0.002) and rows[-1]["lr"] < rows[0]["lr"]


def test_custom_eval_fn_sees_step_and_eval_mode(tmp_path: Path) -> None:
    calls = []

    def eval_fn(model, step: int) -> dict:
        calls.append((step, model.training, torch.is_grad_enabled()))
        return {"my_metric": float(step)}

    result = train(_config(tmp_path, **{"train.eval_every": 3}), eval_fn=eval_fn)
    assert calls == [(3, False, False), (6, False, False)]
    assert [r.get("my_metric") for r in result.history] == [None, None, 3.0, None, None, 6.0]
    # A one-argument hook, eval_fn(model), is accepted too.
    result = train(_config(tmp_path / "one", **{"train.steps": 2}), eval_fn=lambda model: {"n": 1.0})
    assert result.history[-1]["n"] == 1.0


def test_epochs_fix_the_step_count(tmp_path: Path) -> None:
    result = train(_config(tmp_path, **{"train.epochs": 2}))  # 64 samples / 16 per batch
    assert result.state.step == 8 and result.state.epoch == 1 and result.state.batch == 4
    assert [r["epoch"] for r in result.history] == [0] * 4 + [1] * 4


def test_ctrl_c_saves_at_a_step_boundary_and_resumes_exactly(tmp_path: Path) -> None:
    def interrupt_at_3(model, step: int) -> dict:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
        return {}

    over = {"train.eval_every": 1}
    reference = train(_config(tmp_path / "ref", **over), eval_fn=lambda m, s: {})
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3.*run the same command again"):
        train(_config(tmp_path / "run", **over), eval_fn=interrupt_at_3)
    assert (tmp_path / "run" / "checkpoints" / "step-00000003.pt").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    resumed = train(_config(tmp_path / "run", **over), eval_fn=lambda m, s: {})
    assert [r["step"] for r in resumed.history] == list(range(1, 7))
    a, b = load_file(reference.final_weights), load_file(resumed.final_weights)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_micro_batches_give_the_same_run(tmp_path: Path) -> None:
    # The loop hands train.micro_batch to the gradient-cache step: same weights, a quarter of the activations.
    full = train(_config(tmp_path / "full", **{"train.steps": 3}))
    micro = train(_config(tmp_path / "micro", **{"train.steps": 3, "train.micro_batch": 4}))
    a, b = load_file(full.final_weights), load_file(micro.final_weights)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-5, worst
    assert [r["loss"] for r in full.history] == pytest.approx([r["loss"] for r in micro.history], abs=1e-5)


def test_bf16_run_trains(tmp_path: Path) -> None:
    result = train(_config(tmp_path, **{"train.precision": "bf16", "train.steps": 8, "train.lr": 0.005}))
    losses = [r["loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and not any(r["skipped"] for r in result.history)
    assert min(losses[-3:]) < losses[0]
