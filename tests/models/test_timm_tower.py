"""The timm (ConvNeXt) image tower, proven against open_clip's TimmModel on random weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipforge.checkpoint import load
from clipforge.checkpoint.open_clip import to_open_clip
from clipforge.checkpoint.strict import load_strict
from clipforge.checkpoint.towers import TOWER_PREFIXES, from_open_clip_towers, to_open_clip_towers
from clipforge.config import CLIPConfig
from clipforge.errors import CheckpointError, ConfigError
from clipforge.factory import create_model
from clipforge.models.clip import CLIP
from clipforge.models.timm_tower import TimmTower
from clipforge.registry import get_model_config
from clipforge.tokenizer import tokenize

TEXTS = ["a photo of a cat", "an emoji of a red heart", "", "dogs running on a beach at sunset"]
_OPEN_CLIP_CONFIGS = Path(open_clip.__file__).parent / "model_configs"


def _tiny(proj: str = "linear") -> CLIPConfig:
    base = get_model_config("tiny-convnext")  # timm's convnext_atto at 32 px
    return base.replace(vision=dataclasses.replace(base.vision, timm_proj=proj))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(len(TEXTS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return images, tokenize(TEXTS)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max().item()


@pytest.mark.parametrize("proj", ["linear", "mlp", ""])  # '' : the trunk's own classifier projects
def test_features_match_open_clip(proj: str, tmp_path: Path) -> None:
    model = create_model(_tiny(proj), seed=0)
    name = f"cf-test-convnext-{proj or 'trunk'}"
    pt = to_open_clip(model, tmp_path / f"{name}.pt")
    open_clip.add_model_config(pt.with_suffix(".json"))
    ref = open_clip.create_model(name, pretrained=str(pt)).eval()  # open_clip's factory and loader
    assert isinstance(ref.visual, open_clip.timm_model.TimmModel)
    assert set(ref.state_dict()) == set(model.state_dict())
    images, tokens = _inputs()
    with torch.no_grad():
        assert _max_diff(model.encode_image(images), ref.encode_image(images)) <= 1e-5
        assert _max_diff(model.encode_text(tokens), ref.encode_text(tokens)) <= 1e-5
    reloaded, _ = load(pt)
    assert reloaded.config == model.config
    with torch.no_grad():
        assert torch.equal(reloaded.encode_image(images), model.encode_image(images))


@pytest.mark.parametrize("name", ["convnext_base", "convnext_base_w", "convnext_large_d_320", "convnext_xxlarge"])
def test_published_configs_have_open_clip_shapes(name: str) -> None:
    cfg = json.loads((_OPEN_CLIP_CONFIGS / f"{name}.json").read_text())
    with torch.device("meta"):  # shapes only: a ConvNeXt-XXLarge CLIP is 1.2 B parameters
        ours = CLIP(get_model_config(name))
        ref = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_key_table_is_the_identity_on_the_tower_prefixes() -> None:
    assert all(k == v for k, v in TOWER_PREFIXES.items())
    state = {"visual.trunk.stem.0.weight": torch.zeros(1), "text.transformer.embeddings.position_ids": torch.zeros(1),
             "logit_scale": torch.zeros(())}  # fmt: skip
    assert list(from_open_clip_towers(state)) == ["visual.trunk.stem.0.weight", "logit_scale"]
    assert list(to_open_clip_towers(from_open_clip_towers(state))) == ["visual.trunk.stem.0.weight", "logit_scale"]


def test_a_mismatched_checkpoint_names_the_key() -> None:
    model = create_model("tiny-convnext", seed=0)
    state = dict(model.state_dict())
    state["visual.head.proj.weight"] = torch.zeros(32, 10)
    with pytest.raises(CheckpointError, match=r"shape mismatch for key 'visual\.head\.proj\.weight'"):
        load_strict(model, state, source="test")
    state = dict(model.state_dict(), **{"visual.head.mlp.fc1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected key 'visual\.head\.mlp\.fc1\.weight'"):
        load_strict(model, state, source="test")


def test_bad_timm_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="timm_proj 'conv'"):
        CLIP(_tiny("conv"))
    base = get_model_config("tiny-convnext")
    with pytest.raises(ConfigError, match="timm_model_name 'no_such_net'"):
        CLIP(base.replace(vision=dataclasses.replace(base.vision, timm_model_name="no_such_net")))


def test_config_round_trips_and_leaves_unused_keys_out() -> None:
    cfg = get_model_config("convnext_large_d_320")
    assert CLIPConfig.from_json(cfg.to_json()) == cfg
    assert cfg.to_dict()["vision_cfg"]["timm_proj"] == "mlp"
    plain = get_model_config("tiny-vit").to_dict()  # open_clip picks towers by the keys' presence
    assert not any(k.startswith("timm_") for k in plain["vision_cfg"])
    assert not any(k.startswith("hf_") for k in plain["text_cfg"])


def test_engine_runs_the_convnext_tower_in_fp32() -> None:
    from clipforge.inference.engine import Engine, EngineConfig

    model = create_model("tiny-convnext", seed=0)
    engine = Engine(model, EngineConfig(precision="fp32", pack_weights=False))
    images, tokens = _inputs()
    with torch.no_grad():
        assert _max_diff(engine.encode_images(images), model.encode_image(images)) <= 1e-5
        assert _max_diff(engine.encode_tokens(tokens), model.encode_text(tokens)) <= 1e-5
    assert not engine.channels_last  # the channels-last lever is for ModifiedResNet only


def test_grad_checkpointing_reaches_the_trunk() -> None:
    model = create_model("tiny-convnext", seed=0)
    model.set_grad_checkpointing(True)
    assert isinstance(model.visual, TimmTower)
    assert all(stage.grad_checkpointing for stage in model.visual.trunk.stages)
