"""Build models by name or config."""

from __future__ import annotations

import torch

from .config import CLIPConfig
from .models.clip import CLIP
from .registry import get_model_config
from .transforms import Preprocess, image_transform

__all__ = ["create_model", "create_preprocess", "resolve_config"]


def resolve_config(model: str | CLIPConfig) -> CLIPConfig:
    return model if isinstance(model, CLIPConfig) else get_model_config(model)


def create_model(
    model: str | CLIPConfig,
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> CLIP:
    """A randomly initialised CLIP (OpenAI's initialisation scheme), in eval mode.

    ``seed`` makes the initialisation reproducible without touching the global RNG.
    """
    config = resolve_config(model)
    if seed is None:
        net = CLIP(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = CLIP(config)
    return net.to(device).eval()


def create_preprocess(model: CLIP | CLIPConfig, train: bool = False) -> Preprocess:
    config = model.config if isinstance(model, CLIP) else model
    return image_transform(config.vision.image_size, train=train)
