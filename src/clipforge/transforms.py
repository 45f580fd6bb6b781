"""Image preprocessing, by default the same steps as OpenAI's ``clip._transform``: resize the
shorter side (bicubic), center crop, convert to RGB, scale to [0, 1], normalise with CLIP's
statistics; other families' statistics and resizing come from their config's preprocess."""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "image_transform", "Preprocess"]

# Per-channel statistics of OpenAI's training images, from openai/CLIP clip/clip.py.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

Preprocess = Callable[[Image.Image], torch.Tensor]


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def image_transform(
    image_size: int,
    train: bool = False,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    train_scale: tuple[float, float] = (0.9, 1.0),
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> Preprocess:
    """PIL image -> (3, image_size, image_size) float tensor.

    ``mean``/``std``: OpenAI's statistics unless given. ``resize_mode`` "shortest" resizes the
    shorter side then center-crops (OpenAI); "squash" resizes straight to the square (SigLIP,
    CLIPA: open_clip's ``resize_mode``). ``train=True`` swaps the geometry for open_clip's
    default augmentation, a random resized crop covering 90-100 % of the image.
    """
    from torchvision import transforms as T

    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[interpolation]
    if train:
        geometry = [T.RandomResizedCrop(image_size, scale=train_scale, interpolation=mode)]
    elif resize_mode == "squash":
        geometry = [T.Resize((image_size, image_size), interpolation=mode)]
    else:
        geometry = [T.Resize(image_size, interpolation=mode), T.CenterCrop(image_size)]
    return T.Compose([*geometry, _to_rgb, T.ToTensor(), T.Normalize(mean or OPENAI_MEAN, std or OPENAI_STD)])
