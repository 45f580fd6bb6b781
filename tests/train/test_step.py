from __future__ import annotations

import pytest
import torch

from clipforge.errors import TrainingError
from clipforge.factory import create_model
from clipforge.losses import ClipLoss, SigLipLoss, siglip_config
from clipforge.registry import get_model_config
from clipforge.train.step import SkipGuard, train_step


def _batch(n: int = 16, seed: int = 0, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, 77, dtype=torch.long)
    tokens[:, 0], tokens[:, 1:5], tokens[:, 5] = 49406, torch.randint(0, 49000, (n, 4), generator=g), 49407
    return torch.randn(n, 3, size, size, generator=g), tokens


def _grads_after_step(micro_batch: int | None, loss: str = "clip", arch: str = "tiny-vit", n: int = 16, train: bool = True):
    config = get_model_config(arch)
    model = create_model(siglip_config(config) if loss == "siglip" else config, seed=0).train(train)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the grads, not the update
    images, tokens = _batch(n, size=config.vision.image_size)
    loss_fn = SigLipLoss() if loss == "siglip" else ClipLoss()
    result = train_step(model, loss_fn, images, tokens, optimizer, micro_batch=micro_batch)
    return result, {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_gradients(full, full_grads, cached, cached_grads) -> None:
    assert not full.skipped and not cached.skipped
    assert cached.loss == pytest.approx(full.loss, abs=1e-6)
    assert set(full_grads) == set(cached_grads)
    for name, grad in full_grads.items():
        assert (grad - cached_grads[name]).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_gradient_cache_equals_full_batch_gradients(loss: str) -> None:
    _assert_same_gradients(*_grads_after_step(None, loss), *_grads_after_step(4, loss))


def test_gradient_cache_is_exact_for_a_resnet_with_frozen_batch_norm() -> None:
    # In train mode BatchNorm would normalise with each micro-batch's statistics (documented).
    _assert_same_gradients(*_grads_after_step(None, arch="tiny-rn", n=8, train=False),
                           *_grads_after_step(4, arch="tiny-rn", n=8, train=False))  # fmt: skip


def _norm_buffers(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_gradient_cache_moves_batch_norm_statistics_once_per_micro_batch() -> None:
    model = create_model("tiny-rn", seed=0).train()
    images, tokens = _batch(8, size=64)
    train_step(model, ClipLoss(), images, tokens, torch.optim.SGD(model.parameters(), lr=0.0), micro_batch=4)
    reference = create_model("tiny-rn", seed=0).train()
    with torch.no_grad():  # what gradient accumulation over the two micro-batches would do
        reference.encode_image(images[:4]), reference.encode_image(images[4:])
    expected, got = _norm_buffers(reference), _norm_buffers(model)
    assert expected and expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs a GPU")
def test_fp16_gradient_cache_on_gpu_matches_fp32_and_backs_off_on_overflow() -> None:
    images, tokens = (t.cuda() for t in _batch())
    grads = {}
    for precision in ("fp32", "fp16"):
        model = create_model("tiny-vit", seed=0, device="cuda").train()
        scaler = torch.amp.GradScaler("cuda", init_scale=1024.0) if precision == "fp16" else None
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        result = train_step(model, ClipLoss(), images, tokens, optimizer, micro_batch=4, precision=precision, scaler=scaler)
        assert not result.skipped
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["fp16"], dim=0).item()
    assert cosine > 0.99  # fp16 activations: close, not equal
    bad = images.clone()
    bad[0] = float("inf")
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    result = train_step(model, ClipLoss(), bad, tokens, optimizer, precision="fp16", scaler=scaler)
    assert result.skipped and scaler.get_scale() < 1024.0
