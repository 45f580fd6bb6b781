"""Run configs: JSON files, dotted overrides, validation, and the resolved config a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipforge.errors import ConfigError
from clipforge.train import RunConfig, load_run_config, train
from clipforge.train.config import parse_overrides

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny_run.json"


def test_example_config_loads_and_overrides_apply() -> None:
    cfg = load_run_config(EXAMPLE, parse_overrides(["train.lr=3e-4", "train.betas=[0.9, 0.95]", "data.val=null",
                                                    "model=tiny-rn", "train.precision=bf16"]))  # fmt: skip
    raw = json.loads(EXAMPLE.read_text())
    assert cfg.train.steps == raw["train"]["steps"] and cfg.out_dir == raw["out_dir"]
    assert cfg.train.lr == 3e-4 and cfg.train.betas == (0.9, 0.95) and cfg.data.val is None
    assert cfg.model == "tiny-rn" and cfg.train.precision == "bf16"


def test_override_values_are_json_when_they_parse() -> None:
    parsed = parse_overrides(["a=1", "b=2.5", "c=true", "d=null", "e=runs/x", "f=[1,2]", "g={\"k\": 1}", "h=a=b"])
    assert parsed == {"a": 1, "b": 2.5, "c": True, "d": None, "e": "runs/x", "f": [1, 2], "g": {"k": 1}, "h": "a=b"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_unknown_keys_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid keys here: .*batch_size"):
        load_run_config(None, {"train.batchsize": 3})
    with pytest.raises(ConfigError, match="valid keys here: .*out_dir"):
        load_run_config(None, {"outdir": "x"})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"lr": 1e-3, "learning_rate": 1}}))
    with pytest.raises(ConfigError, match=r"train\.learning_rate.*valid.*'lr'"):
        load_run_config(bad)
    bad.write_text(json.dumps({"trian": {}}))
    with pytest.raises(ConfigError, match="trian.*valid keys.*train"):
        load_run_config(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.json")


def test_bad_values_are_rejected_before_training() -> None:
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        load_run_config(None, {"train.precision": "fp8"})
    with pytest.raises(ConfigError, match="loss 'triplet'"):
        load_run_config(None, {"train.loss": "triplet"})
    with pytest.raises(ConfigError, match="batch_size must be a whole number"):
        load_run_config(None, {"train.batch_size": 0})
    with pytest.raises(ConfigError, match="nothing would train"):
        load_run_config(None, {"train.lock_image": True, "train.lock_text": True})


def test_run_writes_its_resolved_config(tmp_path: Path) -> None:
    cfg = load_run_config(EXAMPLE, {"data.train": "synthetic:32", "train.batch_size": 16, "train.steps": 2,
                                    "train.threads": 1, "out_dir": str(tmp_path)})  # fmt: skip
    train(cfg)
    written = tmp_path / "config.json"
    assert load_run_config(written) == cfg
    assert RunConfig.from_dict(json.loads(written.read_text())).train.warmup_steps == cfg.train.warmup_steps
