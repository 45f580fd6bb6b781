from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.errors import ConfigError
from clipforge.factory import create_model
from clipforge.losses import ClipLoss, SigLipLoss, make_loss, siglip_config
from clipforge.registry import get_model_config


def _features(n: int = 6, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_clip_loss_matches_a_brute_force_definition() -> None:
    img, txt = _features()
    scale = torch.tensor(10.0)
    loss = ClipLoss()(img, txt, scale)
    logits = scale * img @ txt.T
    expected = 0.0
    for i in range(6):  # -log softmax of the matching pair, both directions
        expected += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    assert loss.item() == pytest.approx(expected.item() / 12, rel=1e-6)


def test_perfect_alignment_gives_near_zero_clip_loss() -> None:
    img, _ = _features()
    assert ClipLoss()(img, img.clone(), torch.tensor(100.0)).item() < 0.2
    assert ClipLoss()(img, img.roll(1, 0), torch.tensor(100.0)).item() > 1.0


def test_siglip_loss_matches_definition_and_needs_bias() -> None:
    img, txt = _features()
    t, b = torch.tensor(10.0), torch.tensor(-10.0)
    logits = t * img @ txt.T + b
    z = 2 * torch.eye(6) - 1
    expected = -F.logsigmoid(z * logits).sum() / 6
    assert SigLipLoss()(img, txt, t, b).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="logit_bias"):
        SigLipLoss()(img, txt, t)


def test_make_loss() -> None:
    assert isinstance(make_loss("clip"), ClipLoss) and isinstance(make_loss("siglip"), SigLipLoss)
    assert make_loss("clip", 0, 1, True, gather_with_grad=False).gather_with_grad is False
    with pytest.raises(ConfigError, match="unknown loss"):
        make_loss("triplet")
    assert math.isfinite(make_loss("clip", local_loss=True)(*_features(), torch.tensor(1.0)).item())


def test_losses_and_gradients_match_open_clip() -> None:
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt = (f.requires_grad_() for f in _features(n=10, d=16, seed=3))
    scale, bias = torch.tensor(7.0, requires_grad=True), torch.tensor(-4.0, requires_grad=True)
    pairs = [(ClipLoss(), open_clip_loss.ClipLoss(), None), (SigLipLoss(), open_clip_loss.SigLipLoss(), bias)]
    for ours, theirs, b in pairs:
        inputs = [img, txt, scale] + ([b] if b is not None else [])
        loss, reference_loss = ours(img, txt, scale, b), theirs(img, txt, scale, *([b] if b is not None else []))
        assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-6)
        mine, reference = torch.autograd.grad(loss, inputs), torch.autograd.grad(reference_loss, inputs)
        for a, r in zip(mine, reference):
            assert torch.allclose(a, r, atol=1e-6), type(ours).__name__


def test_siglip_config_sets_the_papers_initialisation() -> None:
    model = create_model(siglip_config(get_model_config("tiny-vit")), seed=0)
    assert model.scale().item() == pytest.approx(10.0, rel=1e-6)
    assert model.logit_bias.item() == -10.0
