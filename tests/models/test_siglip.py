"""SigLIP / SigLIP 2 towers, proven against open_clip (timm image tower, CustomTextCLIP) and
transformers' SiglipModel on the same random weights; the shipped configs against open_clip's
own models (built on the meta device: shapes and names without the memory)."""

from __future__ import annotations

import json
from importlib import resources

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import SIGLIP_TIMM_VITS, CLIPConfig, apply_overrides
from clipforge.errors import CheckpointError, ConfigError
from clipforge.factory import create_model
from clipforge.checkpoint.hf import config_to_hf, from_hf_state_dict, to_hf_state_dict
from clipforge.checkpoint.open_clip import from_open_clip, open_clip_model_config, to_open_clip_state_dict
from clipforge.models.clip import CLIP

CONFIGS = resources.files("clipforge.model_configs")
# Tiny timm SigLIP ViTs, registered with timm as a real model would be, for open_clip to build.
TIMM_TINY = {
    "vit_tiny_test_patch8_siglip_32": {},  # timm's default erf GELU (SigLIP 1, most SigLIP 2 towers)
    "vit_tiny_test_patch8_siglip_tanh_32": {"act_layer": "gelu_tanh"},  # SigLIP 2's so400m-16, gopt...
}


def _register_tiny_timm_models() -> None:
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    for name, extra in TIMM_TINY.items():
        if timm.models.is_model(name):
            continue

        def build(pretrained: bool = False, _extra: dict = extra, **kwargs) -> VisionTransformer:
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}
            args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, class_token=False,
                        global_pool="map", **_extra)  # fmt: skip
            return VisionTransformer(**{**args, **kwargs})

        build.__name__ = name
        register_model(build)


_register_tiny_timm_models()


def tiny_siglip(text_tanh: bool = True, vision_tanh: bool = False) -> CLIPConfig:
    cfg = CLIPConfig.from_json(CONFIGS.joinpath("tiny-siglip.json").read_text())
    return apply_overrides(cfg, {"text.act_kwargs": {"approximate": "tanh"} if text_tanh else None,
                                 "vision.act_kwargs": {"approximate": "tanh"} if vision_tanh else None})  # fmt: skip


def open_clip_twin(model: CLIP) -> nn.Module:
    """open_clip's CustomTextCLIP with a timm image tower, loaded with our weights."""
    tanh = model.config.vision.act_approximate == "tanh"
    cfg = open_clip_model_config(model, timm_model_name=list(TIMM_TINY)[int(tanh)])
    assert cfg.pop("custom_text") is True
    twin = open_clip.model.CustomTextCLIP(**cfg)
    twin.load_state_dict(to_open_clip_state_dict(model), strict=True)
    return twin.eval()


def hf_twin(model: CLIP) -> nn.Module:
    from transformers import SiglipConfig, SiglipModel

    twin = SiglipModel(SiglipConfig(**config_to_hf(model.config)))
    twin.load_state_dict(to_hf_state_dict(model), strict=True)
    return twin.eval()


def _inputs(model: CLIP, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    images = torch.randn(batch, 3, model.image_size, model.image_size, generator=g)
    tokens = torch.randint(0, model.vocab_size, (batch, model.context_length), generator=g)
    tokens[:, -3:] = 1  # SigLIP pads with </s> (id 1) and pools the last position
    return images, tokens


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max().item()


@pytest.mark.parametrize("text_tanh,vision_tanh", [(False, False), (True, False), (True, True)],
                         ids=["siglip", "siglip2", "siglip2-tanh-vision"])  # fmt: skip
def test_features_match_open_clip(text_tanh: bool, vision_tanh: bool) -> None:
    model = create_model(tiny_siglip(text_tanh, vision_tanh), seed=0)
    twin = open_clip_twin(model)
    images, tokens = _inputs(model)
    with torch.no_grad():
        assert _max_diff(model.encode_image(images), twin.encode_image(images)) <= 1e-5
        assert _max_diff(model.encode_text(tokens), twin.encode_text(tokens)) <= 1e-5
    assert model.logit_bias is not None and torch.equal(model.logit_bias, twin.logit_bias)


def test_features_match_transformers_siglip() -> None:
    model = create_model(tiny_siglip(), seed=1)
    twin = hf_twin(model)
    images, tokens = _inputs(model)
    with torch.no_grad():
        img = twin.get_image_features(pixel_values=images)
        txt = twin.get_text_features(input_ids=tokens)
        assert _max_diff(model.encode_image(images), getattr(img, "pooler_output", img)) <= 1e-5
        assert _max_diff(model.encode_text(tokens), getattr(txt, "pooler_output", txt)) <= 1e-5


def test_random_transformers_weights_give_the_same_features() -> None:
    """The other direction: SiglipModel's own random init, through our table."""
    from transformers import SiglipConfig, SiglipModel

    model = create_model(tiny_siglip(), seed=0)
    torch.manual_seed(5)
    hf = SiglipModel(SiglipConfig(**config_to_hf(model.config))).eval()
    model.load_state_dict(from_hf_state_dict(hf.state_dict()), strict=True)
    images, tokens = _inputs(model)
    with torch.no_grad():
        img = hf.get_image_features(pixel_values=images)
        assert _max_diff(model.encode_image(images), getattr(img, "pooler_output", img)) <= 1e-5


def test_text_tower_is_bidirectional_and_pooled_at_the_last_position() -> None:
    model = create_model(tiny_siglip(), seed=0)
    _, tokens = _inputs(model, 2)
    changed = tokens.clone()
    changed[:, 0] += 1  # the first token reaches the last position only without a causal mask
    with torch.no_grad():
        a, b = model.encode_text(tokens), model.encode_text(changed)
        short = model.encode_text(tokens[:, :-1])  # no trimming to an "end of text": the ids as given
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, short)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    model = create_model(tiny_siglip(), seed=3).train()
    images, tokens = _inputs(model, 2)

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        img, txt, scale = model(images, tokens)
        (scale * img @ txt.T + model.logit_bias).sigmoid().sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.set_grad_checkpointing(True)
    for a, b in zip(plain, grads(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", sorted(
    p.name[:-5] for p in CONFIGS.iterdir() if "SigLIP" in p.name))  # fmt: skip
def test_shipped_config_matches_open_clip(name: str) -> None:
    """Every SigLIP config: open_clip's model (timm tower) and ours, on the meta device, have the
    same tensors under the table, and the same activations and LayerNorm eps."""
    data = json.loads(CONFIGS.joinpath(f"{name}.json").read_text())
    config = CLIPConfig.from_dict(data)
    with torch.device("meta"):
        ref = open_clip.model.CustomTextCLIP(**{k: v for k, v in data.items() if k != "custom_text"})
        ours = CLIP(config)
    theirs = {k: v.shape for k, v in from_open_clip(ref.state_dict()).items()}
    assert theirs == {k: v.shape for k, v in ours.state_dict().items()}
    trunk, ref_text = ref.visual.trunk, ref.text
    assert _approximate(ours.visual.transformer.resblocks[0].mlp.gelu) == _approximate(trunk.blocks[0].mlp.act)
    assert _approximate(ours.visual.attn_pool.mlp.gelu) == _approximate(trunk.attn_pool.mlp.act)
    assert _approximate(ours.transformer.resblocks[0].mlp.gelu) == _approximate(ref_text.transformer.resblocks[0].mlp.gelu)
    assert ours.visual.ln_post.eps == trunk.norm.eps and ours.ln_final.eps == ref_text.ln_final.eps
    assert name.startswith("ViT") and config.vision.image_size == SIGLIP_TIMM_VITS[data["vision_cfg"]["timm_model_name"]][0]


def _approximate(act: nn.Module) -> str:
    """'none' or 'tanh' for torch's GELU and timm's GELUTanh (a class of its own)."""
    if type(act).__name__ == "GELUTanh":
        return "tanh"
    assert isinstance(act, nn.GELU), type(act)
    return act.approximate


def test_open_clip_timm_config_reads_as_our_vit() -> None:
    data = json.loads(CONFIGS.joinpath("ViT-SO400M-14-SigLIP-384.json").read_text())
    config = CLIPConfig.from_dict(data)
    v = config.vision
    assert (v.timm_model_name, v.pool_type, v.class_token, v.patch_bias, v.no_ln_pre, v.proj_type) == (
        None, "map", False, True, True, "none")
    assert (v.width, v.layers, v.num_heads, v.patch_size, v.norm_eps) == (1152, 27, 16, 14, 1e-6)
    assert CLIPConfig.from_json(config.to_json()) == config
    with torch.device("meta"):
        assert CLIP(config).visual.positional_embedding.shape == (27 * 27, 1152)  # 384 = 27 * 14 + 6
    bad = {**data, "vision_cfg": {**data["vision_cfg"], "width": 1024}}
    with pytest.raises(ConfigError, match="'width' = 1024 contradicts timm's vit_so400m_patch14_siglip_384"):
        CLIPConfig.from_dict(bad)


def test_engine_runs_siglip_images_in_fp32() -> None:
    from clipforge.inference.engine import Engine, EngineConfig

    model = create_model(tiny_siglip(), seed=0)
    engine = Engine(model, EngineConfig(precision="fp32"))
    images, _ = _inputs(model)
    with torch.no_grad():
        expected = F.normalize(model.encode_image(images), dim=-1)
    assert (engine.encode_images(images) - expected).abs().max() <= 1e-6


def test_engine_encodes_siglip_tokens_like_the_model() -> None:
    from clipforge.inference.engine import Engine, EngineConfig

    model = create_model(tiny_siglip(), seed=0)
    engine = Engine(model, EngineConfig(precision="fp32"))
    _, tokens = _inputs(model)
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tokens), dim=-1)
    assert (engine.encode_tokens(tokens) - expected).abs().max() <= 1e-6


def test_open_clip_export_needs_a_timm_name() -> None:
    model = create_model(tiny_siglip(), seed=0)
    with pytest.raises(CheckpointError, match="no timm model in SIGLIP_TIMM_VITS.*timm_model_name="):
        open_clip_model_config(model)
    broken = create_model(apply_overrides(tiny_siglip(), {"vision.no_ln_pre": False}), seed=0)
    with pytest.raises(CheckpointError, match="'no_ln_pre'"):
        open_clip_model_config(broken, timm_model_name=list(TIMM_TINY)[0])
