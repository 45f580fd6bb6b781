"""Effective robustness: the baseline trend, the summary, the plot, and `clipforge eval shift`
end to end on a real OpenMoji slice with a reference result."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import clipforge
from clipforge.eval.shift import NOTO_FONT, baseline_trend, plot_shift, robustness_summary


def _rows(train_style: float, *others: float) -> list[dict]:
    names = ["openmoji (training style)"] + [f"style {i}" for i in range(len(others))]
    return [{"style": n, "acc1": a, "acc5": a, "drop_acc1": train_style - a} for n, a in zip(names, (train_style, *others))]


def test_trend_through_two_references_is_a_line_in_logit_space() -> None:
    trend = baseline_trend([(0.2, 0.05), (0.4, 0.12)])
    assert trend(0.2) == pytest.approx(0.05) and trend(0.4) == pytest.approx(0.12)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    mid = trend(0.3)
    slope = (logit(0.12) - logit(0.05)) / (logit(0.4) - logit(0.2))
    assert logit(mid) == pytest.approx(logit(0.05) + slope * (logit(0.3) - logit(0.2)))


def test_one_reference_keeps_its_logit_drop() -> None:
    trend = baseline_trend([(0.2, 0.05)])
    assert trend(0.2) == pytest.approx(0.05) and 0.05 < trend(0.3) < 0.3


def test_summary_reports_kept_fraction_and_height_above_the_trend() -> None:
    rows = _rows(0.30, 0.20, 0.10)
    plain = robustness_summary(rows)
    assert plain["other_styles_acc1"] == pytest.approx(0.15) and plain["kept_fraction"] == pytest.approx(0.5)
    assert "effective_robustness" not in plain
    summary = robustness_summary(rows, [(0.30, 0.05)])
    assert summary["baseline_predicted_acc1"] == pytest.approx(0.05)
    assert summary["effective_robustness"] == pytest.approx(0.10)


def test_plot_is_written(tmp_path: Path) -> None:
    plot_shift(tmp_path / "shift.png", _rows(0.3, 0.2, 0.1), [(0.25, 0.05), (0.35, 0.08)])
    assert (tmp_path / "shift.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_eval_shift_cli_with_a_baseline(tmp_path: Path) -> None:
    if not NOTO_FONT.is_file():
        pytest.skip("scripts/test installs fonts-noto-color-emoji; without it eval shift says so (tested in test_tasks)")
    from clipforge.datasets import build_dataset

    data = tmp_path / "openmoji"
    build_dataset("openmoji", data, image_size=32, limit=60, holdout_fraction=0.2, val_fraction=0.1)
    checkpoint = clipforge.save(clipforge.create_model("tiny-vit", seed=0), tmp_path / "tiny.safetensors")
    run = lambda *extra: subprocess.run([sys.executable, "-m", "clipforge", "eval", "shift", "-m", str(checkpoint),  # noqa: E731
                                         "-d", str(data), *extra], capture_output=True, text=True, timeout=300)  # fmt: skip
    first = run("--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-2000:]
    result_file = tmp_path / "a" / "style_shift_openmoji.json"
    metrics = json.loads(result_file.read_text())["metrics"]
    assert metrics["styles"][0]["style"] == "openmoji (training style)" and len(metrics["styles"]) >= 4
    assert 0 <= metrics["other_styles_acc1"] <= 1 and (tmp_path / "a" / "style_shift_openmoji.png").is_file()
    second = run("--out", str(tmp_path / "b"), "--baseline", str(result_file))
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads((tmp_path / "b" / "style_shift_openmoji.json").read_text())["metrics"]
    assert again["effective_robustness"] == pytest.approx(0.0, abs=1e-6)  # the same model is its own trend
    assert "effective_robustness" in (tmp_path / "b" / "style_shift_openmoji.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text('{"metrics": {}}')
    refused = run("--out", str(tmp_path / "c"), "--baseline", str(bad))
    assert refused.returncode != 0 and "is not a style-shift result" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "c").exists()
