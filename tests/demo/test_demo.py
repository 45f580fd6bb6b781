"""The main job end to end on a small slice of the real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_trains_evaluates_and_reports(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "clipforge", "demo", "--minutes", "0.25", "--limit", "500", "--recipe", "mix",
            "--out", str(tmp_path / "out")]  # fmt: skip
    env_cache = {"CLIPFORGE_CACHE": str(tmp_path / "cache")}
    import os

    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, **env_cache})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "zero-shot top-1" in done.stdout and "held-out concepts" in done.stdout
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    for split in ("trained concepts", "held-out concepts"):
        r = results["results"][split]
        assert 0.0 <= r["acc1"] <= r["acc5"] <= 1.0
        assert r["image_retrieval_recall@1"] <= r["image_retrieval_recall@10"]
        assert len(r["examples"]) > 0
    assert results["run"]["steps"] > 0
    html = (out / "report.html").read_text()
    for image in ["predictions_trained_concepts.png", "predictions_heldout_concepts.png", "run/loss.png"]:
        assert image in html and (out / image).read_bytes()[:4] == b"\x89PNG"
    assert (out / "report.md").is_file() and (out / "run" / "final.safetensors").is_file()
    # The mix recipe: OpenMoji mixed with the clip-art sets whose packages are installed, with the
    # default recipe's style augmentation, and the style-shift table in the report (scripts/test
    # installs the fonts and clip-art).
    run = results["run"]
    assert run["recipe"] == "mix" and run["style"]["grayscale"] > 0 and run["style"]["padding"] > 0
    assert set(run["samples_by_source"]) == {"openmoji-48-500", *(f"{n}-48-500" for n in run["clipart_sources"])}
    if Path("/usr/share/tuxpaint/stamps").is_dir():
        assert "tuxpaint" in run["clipart_sources"]
    shift = results["style_shift"]
    assert shift["styles"][0]["style"] == "openmoji (training style)" and 0 <= shift["other_styles_acc1"] <= 1
    assert "Robustness to style shift" in html and "noto color emoji" in html and "style_shift.png" in html
    assert "by drawing style" in done.stdout


@pytest.mark.slow
def test_demo_rejects_an_unknown_recipe(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "clipforge", "demo", "--recipe", "fancy", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "unknown recipe 'fancy'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()
