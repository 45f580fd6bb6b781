"""The training run end to end: real processes, real files, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipforge.errors import ConfigError, DataError
from clipforge.factory import create_model
from clipforge.train import load_run_config, train
from clipforge.train.optim import lr_at, param_groups
from clipforge.train.state import latest_state

BASE = ["data.train=synthetic:192", "train.batch_size=32", "train.steps=24", "train.checkpoint_every=4",
        "train.warmup_steps=4", "train.lr=0.001", "train.log_every=1", "train.threads=1"]  # fmt: skip


def _cli(out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "clipforge", "train"]
    for pair in [*BASE, f"out_dir={out}", *extra]:
        args += ["--set", pair]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final.safetensors")


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    reference = _cli(tmp_path / "ref")
    killed = _cli(tmp_path / "killed")
    target = tmp_path / "killed" / "checkpoints" / "step-00000008.pt"
    deadline = time.time() + 240
    while not target.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    assert target.exists(), killed.stderr.read() if killed.poll() is not None else "no checkpoint in time"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "final.safetensors").exists()
    resumed = _cli(tmp_path / "killed")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 24  # no duplicated rows after the resume


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path: Path) -> None:
    cfg = load_run_config(None, {"data.train": "synthetic:64", "train.batch_size": 16, "train.steps": 8,
                                 "train.checkpoint_every": 4, "train.keep_last": 3, "out_dir": str(tmp_path)})  # fmt: skip
    train(cfg)
    newest = tmp_path / "checkpoints" / "step-00000008.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # as if killed mid-write without our rename
    path, payload = latest_state(tmp_path)
    assert path.name == "step-00000004.pt" and payload["state"]["step"] == 4


@pytest.mark.slow
def test_two_processes_under_torchrun_equal_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["train.steps=6", "data.spread_concepts=false"]
    one = _cli(tmp_path / "one", *extra, "train.batch_size=32", env=env)
    assert one.wait(timeout=300) == 0, one.stderr.read()
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "clipforge", "train"]  # fmt: skip
    for pair in [*BASE, *extra, "train.batch_size=16", f"out_dir={tmp_path / 'two'}"]:
        args += ["--set", pair]
    two = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-5, key


def test_clear_errors_for_bad_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid keys here: .*batch_size"):
        load_run_config(None, {"train.batchsize": 3})
    with pytest.raises(DataError, match="does not exist"):
        train(load_run_config(None, {"data.train": str(tmp_path / "none.csv"), "out_dir": str(tmp_path)}))
    with pytest.raises(DataError, match="larger than the data set"):
        train(load_run_config(None, {"data.train": "synthetic:8", "train.batch_size": 16, "out_dir": str(tmp_path)}))
    empty = tmp_path / "empty.csv"
    empty.write_text("image,caption\n")
    with pytest.raises(DataError, match="no image"):
        train(load_run_config(None, {"data.train": str(empty), "out_dir": str(tmp_path)}))


def test_parameter_groups_by_module_type() -> None:
    for name in ["tiny-vit", "tiny-rn"]:
        model = create_model(name)
        names = {id(p): n for n, p in model.named_parameters()}
        decay, no_decay = (sorted(names[id(p)] for p in g["params"]) for g in param_groups(model, 0.1))
        assert len(decay) + len(no_decay) == len(names)
        for n in no_decay:  # biases, norms, embeddings, temperature
            assert n.endswith(("bias", "embedding", "embedding.weight", "logit_scale")) or ".ln" in n or "ln_" in n \
                or ".bn" in n or "downsample.1" in n, n
        for n in decay:  # weight matrices only
            assert n.endswith(("weight", "proj", "projection")) and "ln" not in n and "bn" not in n, n
        assert "logit_scale" in no_decay and "token_embedding.weight" in no_decay and "text_projection" in decay


def test_schedule_warms_up_then_decays_to_zero() -> None:
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)


def test_plot_writes_pngs(tmp_path: Path) -> None:
    from clipforge.train.plot import plot_run

    train(load_run_config(None, {"data.train": "synthetic:64", "train.batch_size": 16, "train.steps": 4,
                                 "train.log_every": 1, "out_dir": str(tmp_path)}))  # fmt: skip
    written = plot_run(tmp_path)
    assert {p.name for p in written} == {"loss.png", "logit_scale.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
