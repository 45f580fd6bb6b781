"""Killing the real CLI: SIGKILL after a checkpoint, and Ctrl-C (SIGINT); the resumed run ends
with weights bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BASE = ["data.train=synthetic:192", "train.batch_size=32", "train.steps=24", "train.checkpoint_every=4",
        "train.warmup_steps=4", "train.lr=0.001", "train.log_every=1", "train.threads=1"]  # fmt: skip


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "clipforge", "train"]
    for pair in [*BASE, f"out_dir={out}", *extra]:
        args += ["--set", pair]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 240
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert path.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"  # type: ignore[union-attr]


def _assert_same_final_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "final.safetensors"), load_file(b / "final.safetensors")
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]
    steps = [json.loads(l)["step"] for l in (b / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))  # every step logged once, none duplicated by the resume


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    proc = _cli(out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()  # type: ignore[union-attr]
    return out


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path, reference: Path) -> None:
    killed = _cli(tmp_path)
    _wait_for(tmp_path / "checkpoints" / "step-00000008.pt", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "final.safetensors").exists()
    resumed = _cli(tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()  # type: ignore[union-attr]
    _assert_same_final_weights(reference, tmp_path)


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_resumes_bit_identical(tmp_path: Path, reference: Path) -> None:
    interrupted = _cli(tmp_path)
    _wait_for(tmp_path / "checkpoints" / "step-00000004.pt", interrupted)
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert (tmp_path / "checkpoints" / f"step-{step:08d}.pt").is_file() and not (tmp_path / "final.safetensors").exists()
    resumed = _cli(tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()  # type: ignore[union-attr]
    _assert_same_final_weights(reference, tmp_path)


# Several in-memory sources by weight, with style augmentation in a DataLoader worker: the
# epoch's composition and every sample's augmentation are seeded, so a kill mid-epoch resumes
# to the same weights.
MIXED = ["data.train=synthetic:128::synthetic:64", "data.train_weights=[0.7, 0.3]", "data.workers=1",
         "data.style.colour_jitter=0.5", "data.style.outline=0.5", "data.style.padding=0.5",
         "data.style.background=0.5", "data.style.blur_sharpen=0.5", "data.style.crop_scale=[0.6, 1.0]"]  # fmt: skip


@pytest.mark.slow
def test_mixed_sources_with_style_augmentation_resume_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    proc = _cli(reference, *MIXED)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()  # type: ignore[union-attr]
    killed = _cli(tmp_path / "run", *MIXED)
    _wait_for(tmp_path / "run" / "checkpoints" / "step-00000008.pt", killed)  # epoch 2 of 6 batches
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "run" / "final.safetensors").exists()
    resumed = _cli(tmp_path / "run", *MIXED)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()  # type: ignore[union-attr]
    _assert_same_final_weights(reference, tmp_path / "run")
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(history[-1]["samples_by_source"]) == {"synthetic:128", "synthetic:64"}
