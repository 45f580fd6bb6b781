from __future__ import annotations

import pytest
import torch

from clipforge.errors import TrainingError
from clipforge.factory import create_model
from clipforge.losses import ClipLoss
from clipforge.train.step import SkipGuard, train_step


def _batch(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, 77, dtype=torch.long)
    tokens[:, 0], tokens[:, 1:5], tokens[:, 5] = 49406, torch.randint(0, 49000, (n, 4), generator=g), 49407
    return torch.randn(n, 3, 32, 32, generator=g), tokens


def _grads_after_step(micro_batch: int | None):
    model = create_model("tiny-vit", seed=0).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the grads, not the update
    images, tokens = _batch()
    result = train_step(model, ClipLoss(), images, tokens, optimizer, micro_batch=micro_batch)
    return result, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_cache_equals_full_batch_gradients() -> None:
    full, full_grads = _grads_after_step(None)
    cached, cached_grads = _grads_after_step(4)
    assert cached.loss == pytest.approx(full.loss, abs=1e-6)
    for name, grad in full_grads.items():
        assert (grad - cached_grads[name]).abs().max().item() <= 1e-5, name


def test_non_finite_step_is_skipped_and_parameters_unchanged() -> None:
    model = create_model("tiny-vit", seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, tokens = _batch()
    images[0, 0, 0, 0] = float("nan")
    result = train_step(model, ClipLoss(), images, tokens, optimizer)
    assert result.skipped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    guard = SkipGuard(max_consecutive=2)
    guard.update(result, step=1)
    with pytest.raises(TrainingError, match="2 consecutive steps"):
        guard.update(result, step=2)


def test_bf16_autocast_step_runs_and_updates() -> None:
    model = create_model("tiny-vit", seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.visual.conv1.weight.clone()
    result = train_step(model, ClipLoss(), *_batch(), optimizer, precision="bf16", max_grad_norm=1.0)
    assert not result.skipped and result.loss > 0
    assert not torch.equal(before, model.visual.conv1.weight)


def test_fp16_on_cpu_is_a_clear_error() -> None:
    model = create_model("tiny-vit", seed=0).train()
    with pytest.raises(TrainingError, match="fp16 training needs a GPU"):
        train_step(model, ClipLoss(), *_batch(), torch.optim.SGD(model.parameters(), lr=0.1), precision="fp16")
