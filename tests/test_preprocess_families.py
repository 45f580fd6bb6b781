"""Each family's image preprocessing equals open_clip's for its published weights: the
architecture's own (SigLIP, CLIPA) from the registry, a tag's (LAION's Inception statistics)
from the pretrained table, and a repository's preprocess_cfg from open_clip_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.pretrained import get_pretrained_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from clipforge import create_preprocess
from clipforge.checkpoint.pretrained import resolve_open_clip_tag, tag_preprocess
from clipforge.config import CLIPConfig, PreprocessConfig
from clipforge.registry import get_model_config


def photo(width: int = 301, height: int = 187) -> Image.Image:
    """A non-square image with detail, so crop vs squash and the filters differ."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def open_clips(name: str, tag: str) -> torch.Tensor:
    cfg = get_pretrained_cfg(name, tag)
    size = get_model_config(name).vision.image_size
    pre = PreprocessCfg(size=size, mean=cfg["mean"], std=cfg["std"], interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
    return image_transform_v2(pre, is_train=False)(photo())


@pytest.mark.parametrize("name, tag", [("ViT-B-16-SigLIP", "webli"), ("ViT-SO400M-14-SigLIP2-378", "webli"),
                                       ("ViT-H-14-CLIPA-336", "datacomp1b"), ("ViT-B-32", "laion2b_s34b_b79k")])  # fmt: skip
def test_architecture_preprocess_equals_open_clips(name: str, tag: str) -> None:
    ours = create_preprocess(get_model_config(name))(photo())
    assert torch.allclose(ours, open_clips(name, tag), atol=1e-6)


def test_a_tags_statistics_override_the_architectures() -> None:
    """LAION's ViT-L-14 weights were trained with Inception's mean/std, not OpenAI's."""
    config = get_model_config("ViT-L-14")
    pre = tag_preprocess(resolve_open_clip_tag("ViT-L-14", "laion2b_s32b_b82k"), config.preprocess)
    ours = create_preprocess(config.replace(preprocess=pre))(photo())
    assert torch.allclose(ours, open_clips("ViT-L-14", "laion2b_s32b_b82k"), atol=1e-6)
    assert not torch.allclose(ours, create_preprocess(config)(photo()), atol=1e-3)


def test_preprocess_travels_in_the_config_and_bad_values_name_the_key(tmp_path: Path) -> None:
    config = get_model_config("ViT-B-16-SigLIP")
    data = json.loads(config.to_json())
    assert data["preprocess_cfg"] == {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
    assert CLIPConfig.from_json(config.to_json()) == config
    assert "preprocess_cfg" not in json.loads(get_model_config("ViT-B-32").to_json())  # OpenAI's: not written
    from clipforge.errors import ConfigError

    with pytest.raises(ConfigError, match="'resize_mode'"):
        PreprocessConfig(resize_mode="longest")
    with pytest.raises(ConfigError, match="'mean' needs 3 values"):
        CLIPConfig.from_dict({**data, "preprocess_cfg": {"mean": [0.5, 0.5]}})


def test_a_saved_model_keeps_its_preprocess(tmp_path: Path) -> None:
    import clipforge

    config = get_model_config("tiny-siglip").replace(preprocess=get_model_config("ViT-B-16-SigLIP").preprocess)
    path = clipforge.save(clipforge.create_model(config, seed=0), tmp_path / "m.safetensors")
    model, preprocess = clipforge.load(str(path))
    assert model.config.preprocess == config.preprocess
    assert torch.allclose(preprocess(photo()), create_preprocess(config)(photo()))


def test_a_hugging_face_directory_declares_its_preprocess(tmp_path: Path) -> None:
    """A SiglipModel / CLIPModel directory written the way transformers' processors read it
    loads with that preprocessing (squash and [-1, 1] for SigLIP; crop and OpenAI's for CLIP)."""
    import clipforge
    from clipforge.checkpoint.hf import save_hf_dir

    for name, expected in (("tiny-siglip", get_model_config("ViT-B-16-SigLIP").preprocess), ("tiny-vit", PreprocessConfig())):
        directory = save_hf_dir(clipforge.create_model(name, seed=0), tmp_path / name)
        model, preprocess = clipforge.load(str(directory))
        assert model.config.preprocess == expected, name
        (directory / "preprocessor_config.json").unlink()  # the processor's defaults then
        assert clipforge.load(str(directory))[0].config.preprocess == expected, name
    (directory / "preprocessor_config.json").write_text("{not json")
    from clipforge.errors import CheckpointError

    with pytest.raises(CheckpointError, match="preprocessor_config.json is not a usable image processor config"):
        clipforge.load(str(directory))
