"""The demo's recipes resolve to the run configs the README describes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipforge.demo.recipe import CLIPART_WEIGHTS, ROBUST_STYLE, demo_run_config
from clipforge.style import StyleConfig
from clipforge.train.config import RunConfig


def test_default_recipe_is_openmoji_with_light_style(tmp_path: Path) -> None:
    config = demo_run_config(tmp_path / "openmoji-48", tmp_path / "out", minutes=1,
                             clipart={"tuxpaint": tmp_path / "tuxpaint-48"})  # fmt: skip
    assert config.data.train == str(tmp_path / "openmoji-48")  # clip-art only in "mix"
    assert config.data.train_weights is None and config.data.style == ROBUST_STYLE
    assert ROBUST_STYLE.active and not ROBUST_STYLE.problems()
    assert RunConfig.from_dict(json.loads(config.to_json())) == config  # what the run saves reloads as it was


def test_mix_recipe_weights_sources_and_keeps_held_out_concepts_unseen(tmp_path: Path) -> None:
    clipart = {"tuxpaint": tmp_path / "tuxpaint-48", "openclipart": tmp_path / "openclipart-48"}
    config = demo_run_config(tmp_path / "openmoji-48", tmp_path / "out", minutes=1, recipe="mix", clipart=clipart)
    assert config.data.train.split("::") == [str(tmp_path / n) for n in ("openmoji-48", "tuxpaint-48", "openclipart-48")]
    assert config.data.train_weights == tuple(CLIPART_WEIGHTS[n] for n in ("openmoji", "tuxpaint", "openclipart"))
    assert config.data.exclude_concepts == str(tmp_path / "openmoji-48") and config.data.style == ROBUST_STYLE


def test_wave1_recipe_has_no_style_augmentation(tmp_path: Path) -> None:
    config = demo_run_config(tmp_path / "d", tmp_path / "out", minutes=1, recipe="openmoji")
    assert config.data.style == StyleConfig() and not config.data.style.active
    with pytest.raises(ValueError, match="unknown demo recipe 'fancy'"):
        demo_run_config(tmp_path / "d", tmp_path / "out", minutes=1, recipe="fancy")
