"""open_clip <-> clipforge files for SigLIP (timm image tower, CustomTextCLIP) and the large-ViT
variants: written by one side, read by the other, the features compared on random weights."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F

import clipforge
from clipforge.checkpoint import convert, load
from clipforge.checkpoint.open_clip import open_clip_model_config, to_open_clip, to_open_clip_state_dict
from clipforge.config import CLIPConfig, apply_overrides
from clipforge.errors import CheckpointError, ConfigError
from clipforge.factory import create_model
from clipforge.models.clip import CLIP
from clipforge.registry import get_model_config

CONFIGS = resources.files("clipforge.model_configs")
TINY_TIMM = "vit_tiny_test_patch8_siglip_32"


def _register_tiny_timm_model() -> None:
    """A 32 px, width-64, 2-block timm SigLIP ViT, registered as timm's own are."""
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    if timm.models.is_model(TINY_TIMM):
        return

    def build(pretrained: bool = False, **kwargs) -> VisionTransformer:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}
        args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, class_token=False, global_pool="map")
        return VisionTransformer(**{**args, **kwargs})

    build.__name__ = TINY_TIMM
    register_model(build)


_register_tiny_timm_model()


def tiny_siglip() -> CLIPConfig:
    return CLIPConfig.from_json(CONFIGS.joinpath("tiny-siglip.json").read_text())


def _inputs(size: int, vocab: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, size, size, generator=g), torch.randint(0, vocab, (3, context), generator=g)


def _features(model, images, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return F.normalize(model.encode_image(images), dim=-1), F.normalize(model.encode_text(tokens), dim=-1)


def _assert_close(ours, theirs) -> None:
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max().item() <= 1e-5


def _open_clip_from_files(pt: Path) -> torch.nn.Module:
    """open_clip's own loader: add_model_config(sidecar) + create_model(name, pretrained=pt)."""
    open_clip.add_model_config(pt.with_suffix(".json"))
    return open_clip.create_model(pt.stem, pretrained=str(pt)).eval()


def test_clipforge_to_open_clip_files_and_back(tmp_path: Path) -> None:
    model = create_model(tiny_siglip(), seed=0)
    with torch.no_grad():
        model.logit_bias.fill_(-4.5)
    pt = to_open_clip(model, tmp_path / f"siglip-{uuid.uuid4().hex[:8]}.pt", timm_model_name=TINY_TIMM)
    ref = _open_clip_from_files(pt)
    assert type(ref).__name__ == "CustomTextCLIP" and ref.logit_bias.item() == -4.5
    images, tokens = _inputs(32, 32000, 16)
    _assert_close(_features(model, images, tokens), _features(ref, images, tokens))
    reloaded, _ = load(pt)
    assert reloaded.config == model.config
    _assert_close(_features(reloaded, images, tokens), _features(model, images, tokens))


def test_open_clip_random_model_converts_to_clipforge(tmp_path: Path) -> None:
    """open_clip's own initialisation and files (a training checkpoint with DDP's prefix)."""
    cfg = open_clip_model_config(create_model(tiny_siglip(), seed=0), timm_model_name=TINY_TIMM)
    # A name outside SIGLIP_TIMM_VITS needs its architecture beside it (open_clip ignores those keys).
    bare = {**cfg, "vision_cfg": {k: cfg["vision_cfg"][k] for k in ("timm_model_name", "timm_pool", "timm_proj")}}
    with pytest.raises(ConfigError, match="'vit_tiny_test_patch8_siglip_32' is missing the key 'image_size'"):
        CLIPConfig.from_dict(bare)
    (tmp_path / "epoch_1.json").write_text(json.dumps(cfg))
    torch.manual_seed(1)
    ref = open_clip.model.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()
    state = {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}
    torch.save(state, tmp_path / "epoch_1.pt")
    out = convert(tmp_path / "epoch_1.pt", tmp_path / "ours.safetensors")
    ours, _ = load(out)
    images, tokens = _inputs(32, 32000, 16)
    _assert_close(_features(ours, images, tokens), _features(ref, images, tokens))


@pytest.mark.parametrize("overrides", [
    {"vision.pool_type": "avg", "vision.final_ln_after_pool": True, "vision.no_ln_pre": True,
     "text.pool_type": "last", "text.no_causal_mask": True},
    {"vision.attentional_pool": True, "vision.attn_pooler_queries": 4, "vision.attn_pooler_heads": 2,
     "vision.ls_init_value": 0.5, "text.ls_init_value": 0.5},
], ids=["clipa", "attn-pool-layer-scale"])  # fmt: skip
def test_large_vit_variants_through_open_clip_files(overrides: dict, tmp_path: Path) -> None:
    model = create_model(apply_overrides(get_model_config("tiny-vit"), overrides), seed=0)
    src = clipforge.save(model, tmp_path / "src.safetensors")
    pt = convert(src, tmp_path / f"variant-{uuid.uuid4().hex[:8]}.pt", to="open_clip")
    ref = _open_clip_from_files(pt)
    images, tokens = _inputs(32, 49408, 77)
    _assert_close(_features(model, images, tokens), _features(ref, images, tokens))
    back, _ = load(pt)
    assert back.config == model.config


@pytest.mark.parametrize("name", sorted(p.name[:-5] for p in CONFIGS.iterdir() if "SigLIP" in p.name))
def test_shipped_siglip_exports_name_timms_model(name: str) -> None:
    data = json.loads(CONFIGS.joinpath(f"{name}.json").read_text())
    with torch.device("meta"):
        ours = CLIP(CLIPConfig.from_dict(data))
        ref = open_clip.model.CustomTextCLIP(**{k: v for k, v in data.items() if k != "custom_text"})
    exported = open_clip_model_config(ours)
    assert exported["vision_cfg"]["timm_model_name"] == data["vision_cfg"]["timm_model_name"]
    assert exported["custom_text"] is True
    theirs = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in to_open_clip_state_dict(ours).items()} == theirs


def test_siglip_state_dict_without_config_says_where_to_put_it(tmp_path: Path) -> None:
    model = create_model(tiny_siglip(), seed=0)
    torch.save(to_open_clip_state_dict(model), tmp_path / "siglip.pt")
    with pytest.raises(CheckpointError, match=r"without its model config.*siglip\.json"):
        load(tmp_path / "siglip.pt")


def test_unknown_or_missing_timm_keys_are_named(tmp_path: Path) -> None:
    model = create_model(tiny_siglip(), seed=0)
    config = json.dumps(open_clip_model_config(model, timm_model_name=TINY_TIMM))
    state = to_open_clip_state_dict(model)
    cases = {
        "extra": ({**state, "visual.trunk.blocks.0.ls1.gamma": torch.ones(64)}, "'visual.trunk.blocks.0.ls1.gamma'"),
        "missing": ({k: v for k, v in state.items() if k != "visual.trunk.attn_pool.kv.bias"},
                    "missing key 'visual.trunk.attn_pool.kv.bias'"),
        "shape": ({**state, "visual.trunk.norm.bias": torch.zeros(3)}, "'visual.ln_post.bias'"),
    }  # fmt: skip
    for name, (broken, message) in cases.items():
        torch.save(broken, tmp_path / f"{name}.pt")
        (tmp_path / f"{name}.json").write_text(config)
        with pytest.raises(CheckpointError, match=message):
            load(tmp_path / f"{name}.pt")


def test_cli_convert_siglip(tmp_path: Path) -> None:
    """The real `clipforge convert`: to HF works; to open_clip a tiny tower has no timm name."""
    src = clipforge.save(create_model(tiny_siglip(), seed=0), tmp_path / "src.safetensors")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "clipforge", "convert", str(src), *args],
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    ok = run(str(tmp_path / "hf"), "--to", "hf")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "siglip"
    refused = run(str(tmp_path / "oc.pt"), "--to", "open_clip")
    assert refused.returncode == 2 and "timm_model_name" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "oc.pt").exists()
