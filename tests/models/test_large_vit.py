"""open_clip's large ViTs and their variants (global average pooling, CoCa's attentional pooler,
final LayerNorm after pooling, no ln_pre, layer scale, head widths and MLP ratios, CLIPA's and
MetaCLIP 2's text pooling): tiny versions against open_clip's own CLIP on the same random weights
(our names are open_clip's, so the state dict loads unchanged), the shipped configs against
open_clip's models on the meta device, and transformers' CLIPModel where it can express them."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipforge.checkpoint import load
from clipforge.checkpoint.hf import hf_model_type, save_hf_dir
from clipforge.config import CLIPConfig, VisionConfig, TextConfig, apply_overrides
from clipforge.errors import CheckpointError, ConfigError
from clipforge.factory import create_model
from clipforge.models.clip import CLIP
from clipforge.registry import get_model_config

CONFIGS = resources.files("clipforge.model_configs")

VARIANTS: dict[str, dict] = {
    # CLIPA (ViT-*-CLIPA): GAP, LayerNorm after the pool, no ln_pre; bidirectional text pooled last
    "clipa": {"vision.pool_type": "avg", "vision.final_ln_after_pool": True, "vision.no_ln_pre": True,
              "text.pool_type": "last", "text.no_causal_mask": True},
    "avg-pool": {"vision.pool_type": "avg"},
    "attn-pool-tok": {"vision.attentional_pool": True, "vision.attn_pooler_queries": 4, "vision.attn_pooler_heads": 2},
    "attn-pool-avg": {"vision.attentional_pool": True, "vision.attn_pooler_queries": 4,
                      "vision.attn_pooler_heads": 4, "vision.pool_type": "avg"},
    "layer-scale": {"vision.ls_init_value": 0.1, "text.ls_init_value": 0.1},  # ViT-*-alt
    # ViT-bigG-14's shape: head width 104 of 1664, MLP ratio 4.9231 (here 16 of 64, 315 hidden)
    "wide-heads": {"vision.head_width": 16, "vision.mlp_ratio": 4.9231, "text.heads": 4, "text.mlp_ratio": 4.9231},
    "eos-pool": {"text.pool_type": "eos", "text.eos_id": 49407},  # MetaCLIP 2 (ViT-*-worldwide)
    "eps-tanh": {"vision.norm_kwargs": {"eps": 1e-6}, "vision.act_kwargs": {"approximate": "tanh"},
                 "text.norm_kwargs": {"eps": 1e-6}, "text.act_kwargs": {"approximate": "tanh"}},
}  # fmt: skip
# open_clip's ViT configs shipped beside OpenAI's nine (H, g, bigG, e, CLIPA, -alt, worldwide...)
_OPENAI = {"ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"}
LARGE = sorted(
    p.name[:-5] for p in CONFIGS.iterdir()
    if p.name.startswith("ViT-") and "SigLIP" not in p.name and p.name[:-5].removesuffix("-quickgelu") not in _OPENAI
)  # fmt: skip


def variant(name: str) -> CLIP:
    model = create_model(apply_overrides(get_model_config("tiny-vit"), VARIANTS[name]), seed=0)
    with torch.no_grad():  # layer scales start equal; make them distinct so a mix-up shows
        for key, value in model.state_dict().items():
            if key.endswith(".gamma"):
                value.uniform_(0.5, 1.5)
    return model


def open_clip_twin(model: CLIP) -> torch.nn.Module:
    cfg = model.config.to_dict()
    twin = open_clip.model.CLIP(**cfg)
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.eval()


def _inputs(model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    from clipforge.tokenizer import tokenize

    images = torch.randn(4, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    return images, tokenize(["a photo of a cat", "", "a dog on a beach at sunset", "x " * 100], truncate=True)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max().item()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_open_clip(name: str) -> None:
    model = variant(name)
    twin = open_clip_twin(model)
    images, tokens = _inputs(model)
    with torch.no_grad():
        assert _max_diff(model.encode_image(images), twin.encode_image(images)) <= 1e-5
        assert _max_diff(model.encode_text(tokens), twin.encode_text(tokens)) <= 1e-5
    assert CLIPConfig.from_json(model.config.to_json()) == model.config


def test_large_configs_are_shipped() -> None:
    assert {"ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-H-14-CLIPA", "ViT-M-16-alt", "ViT-H-14-worldwide"} <= set(LARGE)


@pytest.mark.parametrize("name", LARGE)
def test_shipped_config_matches_open_clip(name: str) -> None:
    data = json.loads(CONFIGS.joinpath(f"{name}.json").read_text())
    with torch.device("meta"):
        ref = open_clip.model.CLIP(**data)
        ours = CLIP(CLIPConfig.from_dict(data))
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}


def test_bigg_parameter_count_is_open_clips() -> None:
    data = json.loads(CONFIGS.joinpath("ViT-bigG-14.json").read_text())
    with torch.device("meta"):
        ref, ours = open_clip.model.CLIP(**data), CLIP(CLIPConfig.from_dict(data))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters()) and 2.5e9 < count < 2.6e9


@pytest.mark.parametrize("name", ["wide-heads", "eps-tanh"])
def test_hugging_face_clipmodel_parity(name: str, tmp_path: Path) -> None:
    from transformers import CLIPModel

    model = variant(name)
    assert hf_model_type(model.config) == "clip"
    ref = CLIPModel.from_pretrained(save_hf_dir(model, tmp_path / "hf")).eval()
    images, tokens = _inputs(model)
    with torch.no_grad():
        img, txt = ref.get_image_features(pixel_values=images), ref.get_text_features(input_ids=tokens)
        assert _max_diff(model.encode_image(images), getattr(img, "pooler_output", img)) <= 1e-5
        assert _max_diff(model.encode_text(tokens), getattr(txt, "pooler_output", txt)) <= 1e-5
    back, _ = load(tmp_path / "hf")
    for ours, read in [(model.config.vision, back.config.vision), (model.config.text, back.config.text)]:
        hidden = int(ours.width * ours.mlp_ratio)  # HF stores the size: 315 / 64 reads back as 4.921875
        assert read == dataclasses.replace(ours, mlp_ratio=read.mlp_ratio) and int(read.width * read.mlp_ratio) == hidden


@pytest.mark.parametrize("name,key", [("clipa", "'no_ln_pre'"), ("avg-pool", "'pool_type'"),
                                      ("attn-pool-tok", "'attentional_pool'"), ("layer-scale", "'ls_init_value'"),
                                      ("eos-pool", "'pool_type'")])  # fmt: skip
def test_clipmodel_cannot_express_a_variant_and_says_which_key(name: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"CLIPModel cannot express .*{key}"):
        save_hf_dir(variant(name), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("build,key", [
    (lambda: VisionConfig(patch_size=8, image_size=32, pool_type="none"), "'pool_type'"),
    (lambda: VisionConfig(patch_size=8, image_size=32, attentional_pool="parallel"), "'attentional_pool'"),
    (lambda: VisionConfig(patch_size=8, image_size=32, pos_embed_type="sin_cos_2d"), "'pos_embed_type'"),
    (lambda: VisionConfig(patch_size=8, image_size=32, class_token=False), "'pool_type' is 'tok'"),
    (lambda: VisionConfig(patch_size=8, image_size=32, norm_kwargs={"elementwise_affine": False}), "'norm_kwargs'"),
    (lambda: VisionConfig(patch_size=8, image_size=32, act_kwargs={"approximate": "sigmoid"}), "'act_kwargs'"),
    (lambda: TextConfig(pool_type="none"), "'pool_type'"),
    (lambda: TextConfig(proj_type="none"), "'proj_type'"),
    (lambda: CLIPConfig(embed_dim=32, vision=VisionConfig(patch_size=8, image_size=32, width=64, proj_type="none")),
     "'proj_type'"),
    (lambda: CLIPConfig(quick_gelu=True, text=TextConfig(act_kwargs={"approximate": "tanh"})), "'act_kwargs'"),
])  # fmt: skip
def test_unsupported_values_are_config_errors_naming_the_key(build, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build()


@pytest.mark.parametrize("name,vision,text,projection", [
    # laion/CLIP-ViT-{H-14,g-14,bigG-14}-laion2B-* config.json values (hidden, intermediate, layers, heads)
    ("ViT-H-14", (1280, 5120, 32, 16), (1024, 4096, 24, 16), 1024),
    ("ViT-g-14", (1408, 6144, 40, 16), (1024, 4096, 24, 16), 1024),
    ("ViT-bigG-14", (1664, 8192, 48, 16), (1280, 5120, 32, 20), 1280),
])  # fmt: skip
def test_laion_clipmodel_configs_read_as_open_clips(name: str, vision: tuple, text: tuple, projection: int) -> None:
    from transformers import CLIPConfig as HFCLIPConfig

    from clipforge.checkpoint.hf import config_from_hf

    def tower(sizes: tuple) -> dict:
        return dict(zip(("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"), sizes,
                        strict=True), hidden_act="gelu")  # fmt: skip

    hf = HFCLIPConfig(vision_config={**tower(vision), "image_size": 224, "patch_size": 14}, text_config=tower(text),
                      projection_dim=projection).to_dict()  # fmt: skip
    ours, expected = config_from_hf(hf), CLIPConfig.from_json(CONFIGS.joinpath(f"{name}.json").read_text())
    for read, shipped in [(ours.vision, expected.vision), (ours.text, expected.text)]:
        assert read == dataclasses.replace(shipped, mlp_ratio=read.mlp_ratio)
        assert int(read.width * read.mlp_ratio) == int(shipped.width * shipped.mlp_ratio)
    assert ours.embed_dim == expected.embed_dim
