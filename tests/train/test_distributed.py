"""Two real gloo processes under torchrun give the same weights as one process with the same
global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

COMMON = ["data.train=synthetic:192", "train.steps=6", "train.warmup_steps=2", "train.lr=0.001", "train.threads=1",
          "train.checkpoint_every=3", "data.spread_concepts=false"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(out: Path, batch: int) -> list[str]:
    args = []
    for pair in [*COMMON, f"train.batch_size={batch}", f"out_dir={out}"]:
        args += ["--set", pair]
    return args


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_two_processes_under_torchrun_equal_one_process(tmp_path: Path, loss: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["--set", f"train.loss={loss}"] + (["--set", 'model_overrides={"init_logit_bias": -10.0}'] if loss == "siglip" else [])
    one = subprocess.run([sys.executable, "-m", "clipforge", "train", *_args(tmp_path / "one", 32), *extra],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()), "-m", "clipforge", "train"]  # fmt: skip
    two = subprocess.run([*torchrun, *_args(tmp_path / "two", 16), *extra], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-8000:]
    a, b = load_file(tmp_path / "one" / "final.safetensors"), load_file(tmp_path / "two" / "final.safetensors")
    assert set(a) == set(b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-5, worst
    assert len(list((tmp_path / "two" / "checkpoints").glob("step-*.pt"))) == 2  # written once, by rank 0
