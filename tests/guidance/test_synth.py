"""Synthesis against one trained model, judged by another trained apart; the files it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.errors import DataError
from clipforge.guidance import (
    FourierImage,
    PixelPyramid,
    make_parametrisation,
    synthesize,
)


@pytest.mark.parametrize("cls", [PixelPyramid, FourierImage])
def test_parametrisations_render_images_in_range_with_gradients(cls) -> None:
    image = cls(40)
    pixels = image()
    assert pixels.shape == (1, 3, 40, 40) and 0 <= pixels.min() and pixels.max() <= 1
    pixels[:, 0].mean().backward()  # more red: every parameter moves
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in image.parameters())
    with pytest.raises(DataError, match="pyramid or fourier"):
        make_parametrisation("gan", 40)


def test_snapshots_curve_and_determinism() -> None:
    model = clipforge.create_model("tiny-vit", seed=0)
    first = synthesize(model, "a red circle", steps=6, cutouts=2, snapshots=3, seed=3)
    again = synthesize(model, "a red circle", steps=6, cutouts=2, snapshots=3, seed=3)
    assert [s.step for s in first.snapshots] == [0, 3, 6] and len(first.curve) == 6
    assert first.snapshots[0].judge_score is None and "judge" not in first.summary()
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert first.image.size == (64, 64)  # twice the model's 32 px input


@pytest.mark.slow
def test_the_independent_judge_score_rises_too(trained_pair) -> None:
    guide, judge = (clipforge.load(p)[0] for p in trained_pair)
    for prompt in ("a red circle", "a green triangle"):
        result = synthesize(guide, prompt, judge=judge, steps=40, cutouts=8, snapshots=3)
        summary = result.summary()
        assert summary["guide"]["after"] > summary["guide"]["before"] + 0.1, summary
        assert summary["judge"]["rose"] and summary["judge"]["after"] > summary["judge"]["before"] + 0.1, summary
    # What the judge sees is what was asked: a red image for "a red circle".
    red = synthesize(guide, "a red circle", steps=40, cutouts=8, snapshots=2).image
    r, g, b = np.asarray(red, dtype=float).reshape(-1, 3).mean(axis=0)
    assert r > g + 20 and r > b + 20, (r, g, b)


@pytest.mark.slow
def test_guide_command_writes_image_sheet_curve_and_both_scores(trained_pair, tmp_path: Path) -> None:
    guide, judge = map(str, trained_pair)
    out = tmp_path / "g" / "heart.png"
    done = subprocess.run([sys.executable, "-m", "clipforge", "guide", "a red circle", "--model", guide, "--judge", judge,
                           "--out", str(out), "--steps", "20", "--cutouts", "4"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "guide model" in done.stdout and "judge model" in done.stdout
    summary = json.loads((tmp_path / "g" / "heart.json").read_text())
    assert summary["judge_independent"] and summary["steps"] == 20 and len(summary["curve"]) == 20
    assert {"before", "after"} <= set(summary["guide"]) and {"before", "after", "rose"} <= set(summary["judge"])
    assert Image.open(out).size == (64, 64)
    sheet = Image.open(tmp_path / "g" / "heart_sheet.png")
    assert sheet.width == 128 * len(summary["snapshots"])
    assert (tmp_path / "g" / "heart_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_guide_command_refuses_an_empty_prompt(tmp_path: Path) -> None:
    from clipforge.cli import main

    clipforge.save(clipforge.create_model("tiny-vit", seed=0), tmp_path / "m.safetensors")
    assert main(["guide", "  ", "--model", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_pixels_are_not_left_as_noise_by_the_pyramid() -> None:
    """The pyramid's coarse levels carry most of the change: neighbouring pixels stay alike."""
    model = clipforge.create_model("tiny-vit", seed=0)
    result = synthesize(model, "a blue square", steps=20, cutouts=4, snapshots=2)
    pixels = torch.from_numpy(np.asarray(result.image, dtype=np.float32))
    step = (pixels[1:] - pixels[:-1]).abs().mean()
    spread = (pixels - pixels.mean(dim=(0, 1))).abs().mean()
    assert step < spread, (float(step), float(spread))
