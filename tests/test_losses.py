from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import ClipLoss, SigLipLoss, make_loss


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
    with pytest.raises(ValueError, match="logit_bias"):
        SigLipLoss()(img, txt, t)


def test_make_loss() -> None:
    assert isinstance(make_loss("clip"), ClipLoss) and isinstance(make_loss("siglip"), SigLipLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("triplet")
    assert math.isfinite(make_loss("clip", local_loss=True)(*_features(), torch.tensor(1.0)).item())
