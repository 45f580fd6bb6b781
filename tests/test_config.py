from __future__ import annotations

import pytest

from clipforge.config import CLIPConfig, VisionConfig, apply_overrides
from clipforge.errors import ConfigError
from clipforge.registry import get_model_config, list_models


def test_registry_has_the_nine_openai_architectures_and_variants() -> None:
    names = set(list_models())
    for arch in ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
                 "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"]:  # fmt: skip
        assert arch in names and f"{arch}-quickgelu" in names
        assert get_model_config(f"{arch}-quickgelu").quick_gelu
        assert not get_model_config(arch).quick_gelu


def test_openai_head_counts() -> None:
    # OpenAI's build_model: ViT heads = width // 64, ResNet heads = width * 32 // 64.
    assert get_model_config("ViT-L-14").vision.num_heads == 16
    assert get_model_config("RN50x4").vision.num_heads == 40
    assert get_model_config("ViT-L-14-336").vision.image_size == 336


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="ViT-B-32"):
        get_model_config("ViT-B-23")


def test_dotted_overrides_and_unknown_keys() -> None:
    cfg = get_model_config("tiny-vit")
    changed = apply_overrides(cfg, {"vision.width": 128, "embed_dim": 16})
    assert changed.vision.width == 128 and changed.embed_dim == 16 and cfg.vision.width == 64
    with pytest.raises(ConfigError, match="valid keys here: .*width"):
        apply_overrides(cfg, {"vision.widht": 1})


def test_invalid_architectures_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        VisionConfig(image_size=30, patch_size=8, layers=2, width=64)
    with pytest.raises(ConfigError, match="missing the key 'embed_dim'"):
        CLIPConfig.from_dict({"vision_cfg": {}, "text_cfg": {}})
    with pytest.raises(ConfigError, match="not valid JSON"):
        CLIPConfig.from_json("{nope")
