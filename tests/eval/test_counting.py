"""Counting and attribute-binding probes: pictures drawn as asked, scored by a real tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import clipforge
from clipforge.eval.binding import TASKS, binding_eval, binding_trials
from clipforge.eval.counting import (
    COUNTS,
    count_classnames,
    counting_eval,
    counting_images,
)
from clipforge.eval.shapes import COLOURS, draw_shapes


def _blobs(image) -> int:
    ink = (np.asarray(image, dtype=int).sum(axis=2) < 3 * 240)  # anything not white
    return ndimage.label(ink)[1]


def test_each_picture_holds_exactly_the_count_it_is_labelled_with() -> None:
    images, labels = counting_images(per_count=8, size=96, seed=1)
    assert sorted(set(labels)) == list(COUNTS) and len(images) == 8 * len(COUNTS)
    assert [_blobs(im) for im in images] == labels
    assert count_classnames((1, 2, 6)) == ["one shape", "two shapes", "six shapes"]


def test_counting_metrics_add_up_and_carry_chance() -> None:
    model = clipforge.create_model("tiny-vit", seed=0)
    images, labels = counting_images(per_count=5, size=64)
    m = counting_eval(model, clipforge.create_preprocess(model), images, labels)
    assert m["chance_acc1"] == pytest.approx(1 / 6)
    assert sum(m["predicted"].values()) == len(images) and sum(r["n"] for r in m["per_count"]) == len(images)
    assert m["acc1"] == pytest.approx(sum(r["acc1"] * r["n"] for r in m["per_count"]) / len(images))
    confusion = np.array(m["confusion_matrix"])
    predicted = np.repeat(np.array(COUNTS)[None], 6, axis=0)  # column j predicts count j+1
    truth = np.array(COUNTS)[:, None]
    assert m["mean_abs_count_error"] == pytest.approx((confusion * abs(predicted - truth)).sum() / len(images))


def test_binding_captions_swap_only_the_pairing_and_match_the_pixels() -> None:
    trials = binding_trials(30, seed=2)
    for t in trials:
        a, b = t.shapes
        true, false = t.captions["binding"]
        assert sorted(true.split()) == sorted(false.split()) and true != false  # same words, other pairing
        assert f"{a.colour} {a.kind}" in true and f"{b.colour} {a.kind}" in false
        assert a.kind != b.kind and a.colour != b.colour
        shape_true, shape_false = t.captions["shape"]
        assert b.kind in shape_true and b.kind not in shape_false
        pixels = np.asarray(draw_shapes(t.shapes, 96, random.Random(0))).reshape(-1, 3)
        for shape in t.shapes:  # both colours drawn, each as one shape
            assert (np.abs(pixels - COLOURS[shape.colour]).sum(axis=1) < 10).sum() > 50


def test_binding_accuracies_are_win_rates_against_chance_half() -> None:
    model = clipforge.create_model("tiny-vit", seed=0)
    trials = binding_trials(12)
    images = [draw_shapes(t.shapes, 64) for t in trials]
    m = binding_eval(model, clipforge.create_preprocess(model), trials, images)
    assert m["chance"] == 0.5 and m["trials"] == 12
    for task in TASKS:
        assert m[f"{task}_acc"] * 12 == pytest.approx(round(m[f"{task}_acc"] * 12))
        assert m[f"{task}_ci95"][0] <= m[f"{task}_acc"] <= m[f"{task}_ci95"][1]


@pytest.mark.slow
def test_eval_counting_and_binding_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clipforge.cli import app

    clipforge.save(clipforge.create_model("tiny-vit", seed=0), tmp_path / "m.safetensors")
    model = str(tmp_path / "m.safetensors")
    done = CliRunner().invoke(app, ["eval", "counting", "-m", model, "--per-count", "3", "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    assert "chance_acc1" in done.output
    result = json.loads((tmp_path / "out" / "counting_shapes-1-6.json").read_text())
    assert result["task"] == "counting" and len(result["metrics"]["per_count"]) == 6
    assert (tmp_path / "out" / "counting_shapes-1-6_per_count.png").read_bytes()[:4] == b"\x89PNG"
    done = CliRunner().invoke(app, ["eval", "binding", "-m", model, "--trials", "10", "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    result = json.loads((tmp_path / "out" / "binding_shapes-2.json").read_text())
    assert set(TASKS) <= {k.removesuffix("_acc") for k in result["metrics"]}
    assert "chance" in (tmp_path / "out" / "binding_shapes-2.md").read_text()
