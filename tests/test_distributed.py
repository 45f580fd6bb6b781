"""Two real gloo processes on the CPU must reproduce the single-process loss and gradients."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from clipforge.config import apply_overrides
from clipforge.factory import create_model
from clipforge.losses import make_loss
from clipforge.registry import get_model_config

BATCH = 8
CASES = [("clip", False, True), ("clip", True, True), ("siglip", False, True), ("clip", False, False)]


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
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    images, tokens = _batch()
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    results = {}
    for name, local, with_grad in CASES:
        model = _model()
        loss_fn = make_loss(name, rank=rank, world_size=world, local_loss=local)
        loss_fn.gather_with_grad = with_grad
        loss, grads = _loss_and_grads(model, loss_fn, images[part], tokens[part])
        for g in grads.values():  # what DistributedDataParallel does: average gradients
            dist.all_reduce(g)
            g /= world
        dist.all_reduce(loss)
        results[(name, local, with_grad)] = (loss / world, grads)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path: Path) -> None:
    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)
    images, tokens = _batch()
    for name, local, with_grad in CASES:
        model = _model()
        loss, grads = _loss_and_grads(model, make_loss(name), images, tokens)
        d_loss, d_grads = distributed[(name, local, with_grad)]
        assert abs(loss.item() - d_loss.item()) <= 1e-5, (name, local)
        assert set(grads) == set(d_grads)
        for key in grads:
            assert (grads[key] - d_grads[key]).abs().max().item() <= 1e-5, (name, local, key)
