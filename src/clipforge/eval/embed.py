"""Embed an evaluation set once; every task reuses the features."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..models.clip import CLIP
from ..tokenizer import tokenize

__all__ = ["embed_pil_images", "embed_captions"]


@torch.no_grad()
def embed_pil_images(model: CLIP, images: Sequence[Callable[[], Image.Image]] | Sequence[Image.Image],
                     preprocess: Callable[[Image.Image], torch.Tensor], batch_size: int = 256) -> torch.Tensor:  # fmt: skip
    """(n, dim) normalised image features. Items may be images or zero-argument loaders."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        chunk = [im() if callable(im) else im for im in images[start : start + batch_size]]
        batch = torch.stack([preprocess(im) for im in chunk]).to(device)
        out.append(F.normalize(model.encode_image(batch).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)


@torch.no_grad()
def embed_captions(model: CLIP, captions: Sequence[str], batch_size: int = 512) -> torch.Tensor:
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(captions), batch_size):
        tokens = tokenize(list(captions[start : start + batch_size]), context_length=model.context_length, truncate=True)
        out.append(F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)
