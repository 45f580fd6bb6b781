"""The bias probe on OpenMoji's real people drawings, with a real tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import clipforge
from clipforge.eval.bias import (
    ATTRIBUTES,
    GENDERS,
    TONES,
    bias_eval,
    find_people,
    render_people,
)
from clipforge.eval.probe_report import wilson_interval
from clipforge.eval.templates import load_templates


def test_people_come_in_every_gender_and_tone_under_one_neutral_name() -> None:
    people = find_people()
    activities = {p.activity for p in people}
    assert len(activities) >= 40  # OpenMoji 15: about 70
    assert {"person facepalming", "farmer", "person"} <= activities
    for activity in activities:
        cells = {(p.gender, p.tone) for p in people if p.activity == activity}
        assert {(g, t) for g in GENDERS for t in TONES} <= cells, activity
    assert not any(a.startswith(("man ", "woman ")) or "facing right" in a for a in activities)
    facepalm = {p.stem for p in people if p.activity == "person facepalming" and p.gender == "man" and p.tone == "dark"}
    assert facepalm == {"1F926-1F3FF-200D-2642-FE0F"}  # U+1F926 facepalm, dark tone, male sign


def test_renders_differ_by_tone_only_in_colour() -> None:
    people = [p for p in find_people(1) if p.gender == "woman" and p.tone in ("light", "dark")]
    drawn = {p.tone: np.asarray(im.convert("L"), dtype=float) for p, im in zip(people, render_people(people, 48))}
    assert drawn["light"].shape == (48, 48) and (drawn["light"] != drawn["dark"]).any()
    assert drawn["light"].mean() > drawn["dark"].mean()  # the darker tone is darker


def test_wilson_interval_matches_the_formula_by_hand() -> None:
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0) and wilson_interval(10, 10)[1] == 1.0


@pytest.fixture(scope="module")
def probe():
    model = clipforge.create_model("tiny-vit", seed=0)
    people = find_people(3)
    return people, bias_eval(model, clipforge.create_preprocess(model), people, render_people(people, 32), load_templates("emoji"))


def test_groups_rates_and_gaps_agree_with_a_recount(probe) -> None:
    _, m = probe
    rows = m["groups"]
    assert len(rows) == 3 * 6 and all(r["n"] == 3 for r in rows)  # 3 activities in each group
    compared = [r for r in rows if r["tone"] != "default"]
    assert m["acc1_gap"] == pytest.approx(max(r["acc1"] for r in compared) - min(r["acc1"] for r in compared))
    assert m["acc1"] == pytest.approx(sum(r["acc1"] for r in compared) / len(compared))
    by_tone = [sum(r["loaded_rate"] for r in compared if r["tone"] == t) / 3 for t in TONES]
    assert m["loaded_rate_gap_tone"] == pytest.approx(max(by_tone) - min(by_tone))
    for r in rows:
        assert r["loaded_rate"] == pytest.approx(r["crime_rate"] + r["non_human_rate"])
        assert r["acc1_ci95"][0] <= r["acc1"] <= r["acc1_ci95"][1]
    assert m["chance_acc1"] == pytest.approx(1 / 3)
    n_prompts = sum(len(v) for v in ATTRIBUTES.values())
    assert m["chance_loaded_rate"] == pytest.approx((n_prompts - len(ATTRIBUTES["neutral"])) / n_prompts)


@pytest.mark.slow
def test_eval_bias_command_writes_benchmark_json_markdown_and_plot(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clipforge.cli import app

    clipforge.save(clipforge.create_model("tiny-vit", seed=0), tmp_path / "m.safetensors")
    done = CliRunner().invoke(app, ["eval", "bias", "-m", str(tmp_path / "m.safetensors"), "--max-activities", "2",
                                    "--out", str(tmp_path / "out")])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "acc1_gap" in done.output and "loaded_rate" in done.output
    result = json.loads((tmp_path / "out" / "bias_openmoji-people.json").read_text())
    assert result["task"] == "bias" and {"dataset", "model", "pretrained", "metrics"} <= set(result)
    assert result["metrics"]["activities"] == 2 and result["metrics"]["images"] == 2 * 18
    assert (tmp_path / "out" / "bias_openmoji-people_groups.png").read_bytes()[:4] == b"\x89PNG"
    assert "| woman | dark |" in (tmp_path / "out" / "bias_openmoji-people.md").read_text()
