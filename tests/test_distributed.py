"""Two real gloo processes on the CPU must reproduce the single-process loss and gradients."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from clipforge.config import apply_overrides
from clipforge.distributed import DistInfo, all_gather_with_grad, all_reduce_mean, barrier, cleanup, init_distributed, is_main
from clipforge.errors import ConfigError, TrainingError
from clipforge.factory import create_model
from clipforge.losses import ClipLoss, make_loss
from clipforge.registry import get_model_config
from clipforge.train.step import train_step

BATCH = 8
# (loss, local_loss, gather_with_grad): the loss alone, features gathered across processes.
LOSS_CASES = [("clip", False, True), ("clip", True, True), ("siglip", False, True), ("clip", False, False)]
# (loss, local_loss): a whole train_step under DistributedDataParallel with the gradient cache.
DDP_CASES = [("clip", False), ("clip", True), ("siglip", False)]


def _model():
    cfg = get_model_config("tiny-vit")
    cfg = apply_overrides(cfg, {"init_logit_bias": -10.0, "init_logit_scale": math.log(10)})
    return create_model(cfg, seed=0).train()


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32, generator=g)
    tokens = torch.zeros(BATCH, 77, dtype=torch.long)
    tokens[:, 0], tokens[:, 1:6] = 49406, torch.randint(0, 49000, (BATCH, 5), generator=g)
    tokens[:, 6] = 49407
    return images, tokens


def _loss_and_grads(model, loss_fn, images, tokens):
    img, txt, scale = model(images, tokens)
    loss = loss_fn(img, txt, scale, model.logit_bias)
    loss.backward()
    return loss.detach(), _grads(model)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _ddp_grad_cache_step(name: str, local: bool, info: DistInfo, images, tokens):
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # averages gradients over processes
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the gradients, not the update
    loss_fn = make_loss(name, info.rank, info.world_size, local)
    result = train_step(ddp, loss_fn, images, tokens, optimizer, micro_batch=BATCH // info.world_size // 2)
    return all_reduce_mean(torch.tensor(result.loss)), _grads(model)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    info = init_distributed("cpu")
    images, tokens = _batch()
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    results = {"info": (info.rank, info.world_size, info.device, is_main()), "mean": all_reduce_mean(torch.tensor(float(rank)))}
    for name, local, with_grad in LOSS_CASES:
        model = _model()
        loss_fn = make_loss(name, rank, world, local, **({"gather_with_grad": with_grad} if name == "clip" else {}))
        loss, grads = _loss_and_grads(model, loss_fn, images[part], tokens[part])
        for g in grads.values():  # what DistributedDataParallel does: average gradients
            g.copy_(all_reduce_mean(g))
        results[(name, local, with_grad)] = (all_reduce_mean(loss), grads)
    for name, local in DDP_CASES:
        results[("ddp", name, local)] = _ddp_grad_cache_step(name, local, info, images[part], tokens[part])
    barrier()
    if rank == 0:
        torch.save(results, out)
    cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same(expected_loss, expected_grads, loss, grads, case) -> None:
    assert abs(expected_loss.item() - loss.item()) <= 1e-5, case
    assert set(expected_grads) == set(grads), case
    for key in expected_grads:
        # 1e-5 relative to the gradient's size: summation order across ranks differs by CPU
        # (on AMX Xeons the positional embedding's gradients, ~10 in size, differ by 1.1e-5).
        scale = max(1.0, expected_grads[key].abs().max().item())
        assert (expected_grads[key] - grads[key]).abs().max().item() <= 1e-5 * scale, (case, key)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_equal_one_process(tmp_path: Path) -> None:
    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)
    assert distributed["info"] == (0, 2, "cpu", True)
    assert distributed["mean"].item() == 0.5  # ranks 0 and 1
    images, tokens = _batch()
    reference = {name: _loss_and_grads(_model(), make_loss(name), images, tokens) for name in ("clip", "siglip")}
    for case in LOSS_CASES:
        _assert_same(*reference[case[0]], *distributed[case], case)
    for name, local in DDP_CASES:
        _assert_same(*reference[name], *distributed[("ddp", name, local)], ("ddp", name, local))


def test_single_process_without_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert init_distributed("cpu") == DistInfo(0, 0, 1, "cpu")
    x = torch.arange(3.0, requires_grad=True)
    assert all_gather_with_grad(x) is x and torch.equal(all_reduce_mean(x), x) and is_main()
    barrier(), cleanup()  # no process group: both are no-ops


def test_clear_errors_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TrainingError, match="no process group"):
        ClipLoss(world_size=2, rank=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        init_distributed("cpu")
