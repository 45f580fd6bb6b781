"""Style-robust augmentation on real OpenMoji-like drawings: each operation changes how the
picture is drawn, draws are seeded per sample, and the config rejects bad values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipforge.style import STYLE_OPS, StyleAugment, StyleConfig
from clipforge.errors import ConfigError
from clipforge.factory import create_preprocess
from clipforge.train.config import RunConfig, load_run_config


def _drawing(size: int = 48) -> Image.Image:
    # A flat clip-art drawing: coloured shapes with a dark outline on white, a margin around.
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 40, 40), fill=(230, 80, 60), outline=(0, 0, 0), width=2)
    draw.rectangle((18, 20, 30, 32), fill=(60, 120, 220), outline=(0, 0, 0), width=2)
    return image


def _run(config: StyleConfig, seed: int, image: Image.Image | None = None) -> np.ndarray:
    torch.manual_seed(seed)
    return np.asarray(StyleAugment(config)(image or _drawing()))


@pytest.mark.parametrize("op", STYLE_OPS)
def test_each_operation_changes_the_drawing_and_keeps_its_size(op: str) -> None:
    original = np.asarray(_drawing())
    outs = [_run(StyleConfig(**{op: 1.0}), seed) for seed in range(6)]
    assert all(o.shape == original.shape and o.dtype == np.uint8 for o in outs)
    assert any(np.abs(o.astype(int) - original).sum() > 0 for o in outs), f"{op} never changed the image"


def test_specific_operations_do_what_they_say() -> None:
    grey = _run(StyleConfig(grayscale=1.0), 0)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    posterized = _run(StyleConfig(posterize=1.0), 0)
    assert len(np.unique(posterized)) < len(np.unique(np.asarray(_drawing())))
    # background: the white margin takes another colour in at least one draw, the centre stays.
    backgrounds = [_run(StyleConfig(background=1.0), seed) for seed in range(4)]
    assert any((b[0, 0] != 255).any() for b in backgrounds)
    assert all((b[24, 24] == np.asarray(_drawing())[24, 24]).all() for b in backgrounds)


def test_draws_are_seeded_and_probability_zero_is_the_identity() -> None:
    full = StyleConfig(**{op: 0.5 for op in STYLE_OPS})
    assert np.array_equal(_run(full, 7), _run(full, 7))
    assert not all(np.array_equal(_run(full, 7), _run(full, s)) for s in range(8, 12))
    assert np.array_equal(_run(StyleConfig(), 3), np.asarray(_drawing()))


def test_switching_one_operation_off_leaves_the_others_choices() -> None:
    # Grey-scale on its own vs grey-scale + outline: wherever outline's gate stays shut (p=0.5),
    # the pictures are identical; colour jitter drawing more numbers must not shift that.
    both = StyleConfig(grayscale=1.0, outline=0.5, colour_jitter=1.0)
    alone = StyleConfig(grayscale=1.0, colour_jitter=1.0)
    same = [np.array_equal(_run(both, s), _run(alone, s)) for s in range(12)]
    assert any(same) and not all(same)


def test_training_preprocess_applies_style_then_crop() -> None:
    from clipforge.factory import resolve_config

    config = resolve_config("demo")
    plain = create_preprocess(config, train=True)
    styled = create_preprocess(config, train=True, style=StyleConfig(grayscale=1.0, crop_scale=(0.6, 1.0)))
    torch.manual_seed(0)
    x = styled(_drawing())
    assert x.shape == plain(_drawing()).shape
    # grey-scale before normalisation: the three channels are one picture under CLIP's statistics
    from clipforge.transforms import OPENAI_MEAN, OPENAI_STD

    raw = [x[c] * OPENAI_STD[c] + OPENAI_MEAN[c] for c in range(3)]
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    assert create_preprocess(config, train=False, style=StyleConfig(grayscale=1.0))(_drawing()).shape == x.shape


def test_run_config_reads_writes_and_checks_style() -> None:
    config = load_run_config(None, {"data.style.outline": 0.25, "data.style.crop_scale": [0.5, 1.0]})
    assert config.data.style.outline == 0.25 and config.data.style.crop_scale == (0.5, 1.0)
    assert RunConfig.from_dict(__import__("json").loads(config.to_json())) == config
    with pytest.raises(ConfigError, match="data.style.grayscale must be a probability"):
        load_run_config(None, {"data.style.grayscale": 1.5})
    with pytest.raises(ConfigError, match="crop_scale"):
        load_run_config(None, {"data.style.crop_scale": [0.9, 0.2]})
    with pytest.raises(ConfigError, match="unknown config key 'data.style.sepia'"):
        load_run_config(None, {"data.style.sepia": 0.5})
    with pytest.raises(ConfigError, match="data.style.sepia"):
        RunConfig.from_dict({"data": {"style": {"sepia": 0.5}}})
