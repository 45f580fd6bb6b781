"""Training on streamed shards: SIGKILL mid-epoch with two workers resumes bit-identically, damage
and sources are counted in the metrics, two torchrun node launchers see every sample once and
match one process on the same order."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipforge.errors import DataError, TrainingError
from clipforge.train import load_run_config, train

COMMON = {"train.warmup_steps": 2, "train.lr": 0.002, "train.log_every": 1, "train.threads": 1,
          "data.stream": True, "data.shuffle_buffer": 5}  # fmt: skip


def _pairs(over: dict) -> list[str]:
    args = []
    for k, v in over.items():
        args += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return args


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("samples_per_s")
    return rows


@pytest.fixture
def damaged_shards(tmp_path: Path, make_shards) -> str:
    """8 shards of 12, one sample of s-003 undecodable."""
    import webdataset as wds

    pattern = make_shards(tmp_path / "shards", shards=8, per_shard=12)
    with wds.TarWriter(str(tmp_path / "shards" / "s-003.tar")) as sink:
        for i in range(12):
            sink.write({"__key__": f"s3-{i}", "png": b"broken" if i == 5 else _png(i),
                        "json": json.dumps({"caption": f"caption of s3-{i}"}).encode()})
    return pattern


def _png(i: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (i * 20, 50, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _cli(out: Path, over: dict) -> subprocess.Popen:
    args = [sys.executable, "-m", "clipforge", "train", *_pairs({**over, "out_dir": str(out)})]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_epoch_with_two_workers_resumes_bit_identical(tmp_path: Path, damaged_shards: str) -> None:
    # 2 streams × 4 shards × 12 = 96 samples, batch 8: 11 full batches an epoch; 26 steps span 3 epochs.
    over = {**COMMON, "data.train": damaged_shards, "data.workers": 2, "train.batch_size": 8, "train.steps": 26,
            "train.checkpoint_every": 3}  # fmt: skip
    reference = _cli(tmp_path / "reference", over)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()  # type: ignore[union-attr]
    killed = _cli(tmp_path / "killed", over)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-00000006.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "final.safetensors").exists()
    saved = torch.load(sorted((tmp_path / "killed" / "checkpoints").glob("step-*.pt"))[-1], weights_only=True)
    assert saved["state"]["epoch"] == 0 and saved["state"]["stream"]["workers"]  # mid-epoch, with cursors
    resumed = _cli(tmp_path / "killed", over)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()  # type: ignore[union-attr]
    a, b = load_file(tmp_path / "reference" / "final.safetensors"), load_file(tmp_path / "killed" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert _rows(tmp_path / "reference") == _rows(tmp_path / "killed")
    last = _rows(tmp_path / "killed")[-1]
    assert last["epoch"] == 2 and last["skipped_by_reason"]["UnidentifiedImageError"] == 2  # once per epoch read
    assert last["skipped_by_reason"]["partial last batch"] == 2 * 7  # 95 usable samples: 88 in batches


def test_metrics_count_damage_and_samples_per_source(tmp_path: Path, make_shards) -> None:
    a = make_shards(tmp_path / "a", shards=3, per_shard=10, prefix="a")
    b = make_shards(tmp_path / "b", shards=2, per_shard=10, prefix="b")
    (tmp_path / "a" / "a-001.tar").write_bytes(b"\x01" * 2048)  # not a tar
    config = load_run_config(None, {**COMMON, "data.train": f"{a}::{b}::{tmp_path}/c-000.tar",
                                    "data.train_weights": [0.5, 0.3, 0.2], "data.resampled": True,
                                    "data.epoch_samples": 64, "train.batch_size": 8, "train.steps": 8,
                                    "out_dir": str(tmp_path / "run")})  # fmt: skip
    with pytest.raises(DataError, match="matches no existing shard"):
        train(config)
    config = load_run_config(None, {**COMMON, "data.train": f"{a}::{b}", "data.train_weights": [0.75, 0.25],
                                    "data.resampled": True, "data.epoch_samples": 64, "train.batch_size": 8,
                                    "train.epochs": 2, "out_dir": str(tmp_path / "run")})  # fmt: skip
    result = train(config)
    last = result.history[-1]
    assert last["step"] == 16 and result.state.epoch == 1  # 64 samples / 8 per step, two epochs
    assert sum(last["samples_by_source"].values()) == 128
    assert last["samples_by_source"][a] > last["samples_by_source"][b]
    assert any("unreadable shard" in reason for reason in last["skipped_by_reason"])


def test_clear_errors_before_training(tmp_path: Path, make_shards) -> None:
    pattern = make_shards(tmp_path / "s", shards=2, per_shard=8)
    base = {**COMMON, "data.train": pattern, "train.batch_size": 4, "train.steps": 4, "out_dir": str(tmp_path / "run")}
    with pytest.raises(DataError, match="resampled=true draws shards forever"):
        (tmp_path / "s" / "sizes.json").unlink()
        train(load_run_config(None, {**base, "data.resampled": True}))
    with pytest.raises(DataError, match="some would read nothing"):
        train(load_run_config(None, {**base, "data.workers": 3}))
    with pytest.raises(DataError, match="not shards"):
        train(load_run_config(None, {**base, "data.train": "synthetic:32"}))
    train(load_run_config(None, {**base, "train.checkpoint_every": 2, "data.workers": 2}))
    (tmp_path / "run" / "checkpoints" / "step-00000004.pt").unlink()  # as if killed after step 2
    with pytest.raises(TrainingError, match="data.workers"):
        train(load_run_config(None, {**base, "train.checkpoint_every": 2, "data.workers": 0}))
    assert (tmp_path / "run" / "checkpoints" / "step-00000002.pt").is_file()  # the refused resume left it intact


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_see_every_sample_once_and_match_one_process(tmp_path: Path, make_shards) -> None:
    from clipforge.data.shard_sets import shard_sets
    from clipforge.data.stream import StreamSpec, make_stream_loader
    from clipforge.losses import make_loss
    from clipforge.tokenizer import tokenize
    from clipforge.train.loop import build_model
    from clipforge.train.optim import lr_at, make_optimizer
    from clipforge.train.step import train_step
    from clipforge.transforms import image_transform

    pattern = make_shards(tmp_path / "s", shards=8, per_shard=6)
    # 2 nodes × 1 process × 2 workers = 4 streams of 2 shards: 3 batches of 4 each, 6 steps of 8.
    over = {**COMMON, "data.train": pattern, "data.workers": 2, "train.batch_size": 4, "train.steps": 6,
            "train.checkpoint_every": 100, "out_dir": str(tmp_path / "ddp")}  # fmt: skip
    port, env = _free_port(), {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(r), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "clipforge", "train", *_pairs(over)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]  # fmt: skip
    for node in nodes:
        _, err = node.communicate(timeout=400)
        assert node.returncode == 0, err[-6000:]
    ddp_losses = [r["loss"] for r in _rows(tmp_path / "ddp")]

    config = load_run_config(None, {**over, "out_dir": str(tmp_path / "one")})
    t = config.train
    model = build_model(config)
    optimizer = make_optimizer(model, t.lr, t.weight_decay, t.betas, t.eps)
    loss_fn = make_loss(t.loss, 0, 1, False)
    preprocess = image_transform(model.image_size, train=True)
    tok = functools.partial(tokenize, context_length=model.context_length, truncate=True)
    sources = tuple(shard_sets(pattern))
    ranks = [iter(make_stream_loader(StreamSpec(sources, 4, t.seed, 0, r, 2, 2, 5), preprocess, tok)) for r in range(2)]
    losses, keys = [], []
    for step in range(6):
        parts = [next(r) for r in ranks]  # the global batch: rank 0's rows, then rank 1's
        keys += [k for p in parts for k in p.keys]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, t.lr, t.warmup_steps, 6)
        result = train_step(model, loss_fn, torch.cat([p.images for p in parts]), torch.cat([p.tokens for p in parts]),
                            optimizer, max_grad_norm=t.max_grad_norm)  # fmt: skip
        losses.append(result.loss)
    assert sorted(keys) == sorted(f"s{s}-{i}" for s in range(8) for i in range(6))  # each sample once
    assert len(ddp_losses) == 6
    assert max(abs(a - b) for a, b in zip(ddp_losses, losses)) <= 1e-5, (ddp_losses, losses)
