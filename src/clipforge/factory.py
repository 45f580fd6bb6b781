"""Build models by name or config."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

from .config import CLIPConfig
from .style import StyleAugment, StyleConfig
from .models.clip import CLIP
from .models.hf_tokenizer import text_tokenizer
from .registry import get_model_config
from .tokenizer import tokenize
from .transforms import Preprocess, image_transform

__all__ = ["create_model", "create_preprocess", "create_tokenizer", "resolve_config", "Tokenize"]

Tokenize = Callable[[Sequence[str]], torch.Tensor]  # texts -> (n, context_length) int64 ids


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


def create_preprocess(model: CLIP | CLIPConfig, train: bool = False, style: StyleConfig | None = None) -> Preprocess:
    """The image transform the model's weights expect (its config's preprocess: OpenAI's, or
    SigLIP's / CLIPA's statistics and squash resize); ``train``: with augmentation, a random
    resized crop and, with ``style``, the style operations of ``style.py`` before it."""
    config = model.config if isinstance(model, CLIP) else model
    pre = config.preprocess
    crop = style.crop_scale if (train and style is not None) else (0.9, 1.0)
    transform = image_transform(config.vision.image_size, train=train, mean=pre.mean, std=pre.std,
                                interpolation=pre.interpolation, resize_mode=pre.resize_mode, train_scale=crop)  # fmt: skip
    if not (train and style is not None and style.active):
        return transform
    from torchvision.transforms import Compose

    return Compose([StyleAugment(style), transform])


def create_tokenizer(model: CLIP | CLIPConfig, *, download: bool = True) -> Tokenize:
    """The tokenizer the model's text tower reads (open_clip's ``get_tokenizer``): CLIP's BPE, or
    the Hugging Face tokenizer its config names (``hf_tokenizer_name``: SigLIP, XLM-R...).
    Texts longer than the context length are cut, as every CLIP user's pipeline does."""
    config = model.config if isinstance(model, CLIP) else model
    if config.text.hf_tokenizer_name:
        return text_tokenizer(config.text, download=download)
    return functools.partial(tokenize, context_length=config.text.context_length, truncate=True)
