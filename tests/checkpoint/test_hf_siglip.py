"""transformers' SiglipModel <-> clipforge: directories written by transformers read by us and the
other way, tensors identical after a round trip, every SiglipModel parameter in the table."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipforge.checkpoint import convert, load
from clipforge.checkpoint.hf import LAYER_KEYS, SIGLIP_TOP_LEVEL_KEYS, config_from_hf
from clipforge.config import CLIPConfig
from clipforge.errors import CheckpointError

CONFIGS = resources.files("clipforge.model_configs")


def _hf_config(**vision):
    from transformers import SiglipConfig

    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=500, max_position_embeddings=16)  # fmt: skip
    return SiglipConfig(text_config=text, vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, image_size=32, patch_size=8, **vision))  # fmt: skip


def _saved_hf_model(path: Path, **vision) -> torch.nn.Module:
    from transformers import SiglipModel

    torch.manual_seed(0)
    model = SiglipModel(_hf_config(**vision)).eval()
    with torch.no_grad():
        model.logit_bias.fill_(-7.0)
    model.save_pretrained(path)
    return model


def test_transformers_directory_to_clipforge_and_back_is_identical(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    hf = _saved_hf_model(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    ours, _ = load(tmp_path / "ours.safetensors")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(0, 500, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        img = hf.get_image_features(pixel_values=images)
        txt = hf.get_text_features(input_ids=tokens)
        for a, b in [(ours.encode_image(images), img), (ours.encode_text(tokens), txt)]:
            b = getattr(b, "pooler_output", b)
            assert (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max() <= 1e-5
    assert ours.logit_bias.item() == -7.0
    convert(tmp_path / "ours.safetensors", tmp_path / "hf2", to="hf")
    original, again = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    original = {k: v for k, v in original.items() if not k.endswith("position_ids")}
    assert set(again) == set(original)
    assert all(torch.equal(original[k], again[k]) for k in original)
    processor = json.loads((tmp_path / "hf2" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5, 0.5, 0.5] and processor["size"] == {"height": 32, "width": 32}


def test_siglip_table_covers_every_siglipmodel_parameter() -> None:
    from transformers import SiglipModel

    hf_keys = {k for k in SiglipModel(_hf_config()).state_dict() if not k.endswith("position_ids")}
    mapped = {hf for hf, _, _ in SIGLIP_TOP_LEVEL_KEYS.values()}
    per_layer = set(LAYER_KEYS.values()) | {f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")}
    for tower in ("text_model", "vision_model"):
        mapped |= {f"{tower}.encoder.layers.{i}.{k}" for i in range(2) for k in per_layer}
    assert hf_keys == mapped


@pytest.mark.parametrize("hf_name,ours", [
    ("google/siglip-base-patch16-224", "ViT-B-16-SigLIP"),
    ("google/siglip-so400m-patch14-384", "ViT-SO400M-14-SigLIP-384"),
])  # fmt: skip
def test_google_configs_read_as_our_image_towers(hf_name: str, ours: str) -> None:
    """config.json of google's repositories (values as published) -> the same image tower as
    open_clip's config of the same weights (timm's activation is erf GELU, HF's the tanh form:
    the one intended difference)."""
    from transformers import SiglipConfig

    so400m = "so400m" in hf_name
    size = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16) if so400m else {}
    hf = SiglipConfig(text_config=dict(size), vision_config=dict(size, image_size=384 if so400m else 224,
                      patch_size=14 if so400m else 16)).to_dict()  # fmt: skip
    config = config_from_hf(hf)
    expected = CLIPConfig.from_json(CONFIGS.joinpath(f"{ours}.json").read_text())
    hidden = lambda v: int(v.width * v.mlp_ratio)  # noqa: E731  4304 / 1152 vs open_clip's 3.7362: both 4304
    assert {**vars(config.vision), "act_kwargs": None, "mlp_ratio": hidden(config.vision)} == {
        **vars(expected.vision), "mlp_ratio": hidden(expected.vision)}
    assert config.text.width == expected.text.width and config.text.layers == expected.text.layers
    assert int(config.text.width * config.text.mlp_ratio) == int(expected.text.width * expected.text.mlp_ratio)


def test_unsupported_hf_models_are_named(tmp_path: Path) -> None:
    _saved_hf_model(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "siglip2"}))
    with pytest.raises(CheckpointError, match="'siglip2'"):
        load(tmp_path / "hf")
    no_head = {**config, "vision_config": {**config["vision_config"], "vision_use_head": False}}
    with pytest.raises(CheckpointError, match="'vision_use_head'"):
        config_from_hf(no_head)
    relu = {**config, "text_config": {**config["text_config"], "hidden_act": "relu"}}
    with pytest.raises(CheckpointError, match="text_config key 'hidden_act'"):
        config_from_hf(relu)
