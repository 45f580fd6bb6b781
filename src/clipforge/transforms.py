"""Image preprocessing, the same steps as OpenAI's ``clip._transform``: resize the shorter side
(bicubic), center crop, convert to RGB, scale to [0, 1], normalise with CLIP's statistics."""

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
    mean: tuple[float, float, float] = OPENAI_MEAN,
    std: tuple[float, float, float] = OPENAI_STD,
    train_scale: tuple[float, float] = (0.9, 1.0),
) -> Preprocess:
    """PIL image -> (3, image_size, image_size) float tensor.

    ``train=True`` swaps resize + center crop for open_clip's default augmentation, a random
    resized crop covering 90-100 % of the image.
    """
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    if train:
        geometry = [T.RandomResizedCrop(image_size, scale=train_scale, interpolation=bicubic)]
    else:
        geometry = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    return T.Compose([*geometry, _to_rgb, T.ToTensor(), T.Normalize(mean, std)])
