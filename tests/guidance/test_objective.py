"""The differentiable objective: shapes, gradients, bad prompts, and a step that raises the score."""

from __future__ import annotations

import pytest
import torch

import clipforge
from clipforge.errors import DataError, TokenizerError
from clipforge.guidance import ClipObjective, make_cutouts, score_images


@pytest.fixture(scope="module")
def model():
    return clipforge.create_model("tiny-vit", seed=0)


def test_cutouts_are_crops_of_the_image_resized_to_the_model_input() -> None:
    images = torch.rand(2, 3, 64, 48)
    cuts = make_cutouts(images, 32, n=5, augment=False, generator=torch.Generator().manual_seed(0))
    assert cuts.shape == (10, 3, 32, 32)
    assert cuts.min() >= images.min() - 1e-6 and cuts.max() <= images.max() + 1e-6  # resampled, not invented
    flat = torch.zeros(1, 3, 40, 40) + torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1)
    for augment in (False, True):  # a flat image stays flat under crops and flips; noise is small
        out = make_cutouts(flat, 32, n=4, augment=augment, generator=torch.Generator().manual_seed(1))
        assert (out.mean(dim=(0, 2, 3)) - torch.tensor([0.2, 0.5, 0.8])).abs().max() < 0.01


def test_gradient_reaches_the_pixels_only(model) -> None:
    objective = ClipObjective(model, cutouts=4, generator=torch.Generator().manual_seed(0))
    pixels = torch.rand(2, 3, 64, 64, requires_grad=True)
    loss = objective.loss(pixels, "a red circle", negative_prompts=["a blue square"])
    loss.backward()
    assert loss.dim() == 0 and pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_gradient_steps_raise_the_score(model) -> None:
    torch.manual_seed(0)
    pixels = torch.full((1, 3, 64, 64), 0.5).requires_grad_(True)
    objective = ClipObjective(model, cutouts=8)
    before = score_images(model, pixels, "a red circle").item()
    optimiser = torch.optim.Adam([pixels], lr=0.02)
    for _ in range(15):
        optimiser.zero_grad()
        objective.loss(pixels, "a red circle").backward()
        optimiser.step()
        with torch.no_grad():
            pixels.clamp_(0, 1)
    after = score_images(model, pixels, "a red circle").item()
    assert after > before + 0.05, (before, after)


def test_negative_prompts_push_away(model) -> None:
    g = torch.Generator().manual_seed(0)
    objective = ClipObjective(model, cutouts=8, negative_weight=1.0, generator=g)
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    optimiser = torch.optim.Adam([pixels], lr=0.02)
    before = score_images(model, pixels, "a blue square").item()
    for _ in range(15):
        optimiser.zero_grad()
        objective.loss(pixels, "a red circle", negative_prompts="a blue square").backward()
        optimiser.step()
    assert score_images(model, pixels.detach().clamp(0, 1), "a blue square").item() < before


def test_bad_prompts_and_images_are_clear_errors(model) -> None:
    objective = ClipObjective(model, cutouts=2)
    pixels = torch.rand(1, 3, 32, 32)
    for bad in ("", "   ", [], ["a cat", ""]):
        with pytest.raises(DataError, match="empty|no prompt"):
            objective.loss(pixels, bad)
    long = "a very long prompt " * 30
    with pytest.raises(TokenizerError, match="context length"):
        objective.loss(pixels, long)
    assert ClipObjective(model, cutouts=2, truncate=True).loss(pixels, long).isfinite()  # explicit truncation
    with pytest.raises(DataError, match="batch, 3, height, width"):
        objective.loss(torch.rand(3, 32, 32), "a cat")
