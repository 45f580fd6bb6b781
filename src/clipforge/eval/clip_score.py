"""CLIPScore of image–caption pairs, in both conventions in use:

- ``"hessel"``: Hessel et al. 2021, ``2.5 * max(cos, 0)`` per pair, averaged (range 0-2.5);
- ``"torchmetrics"``: torchmetrics' ``CLIPScore``, ``100 * cos`` per pair; over several pairs
  torchmetrics clamps the *mean* at 0 (``max(mean(100 cos), 0)``), not each pair.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..factory import create_preprocess
from ..models.clip import CLIP
from ..factory import create_tokenizer

__all__ = ["clip_score", "CONVENTIONS"]

CONVENTIONS = {"hessel": 2.5, "torchmetrics": 100.0}


@torch.no_grad()
def clip_score(model: CLIP, images: Sequence[Image.Image] | torch.Tensor, captions: Sequence[str],
               convention: Literal["hessel", "torchmetrics"] = "hessel", reduce: bool = True) -> torch.Tensor:  # fmt: skip
    """``images``: PIL images, or a preprocessed (n, 3, H, W) tensor. Returns the mean score
    (``reduce=True``) or one score per pair."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose {' or '.join(CONVENTIONS)}")
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions; CLIPScore scores pairs")
    device = next(model.parameters()).device
    if not isinstance(images, torch.Tensor):
        preprocess = create_preprocess(model)
        images = torch.stack([preprocess(im) for im in images])
    img = F.normalize(model.encode_image(images.to(device)).float(), dim=-1)
    tokens = create_tokenizer(model)(list(captions)).to(device)
    txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
    cosine = (img * txt).sum(dim=-1)  # (n,)
    if convention == "torchmetrics" and reduce:
        return (CONVENTIONS[convention] * cosine.mean()).clamp(min=0)
    scores = CONVENTIONS[convention] * cosine.clamp(min=0)
    return scores.mean() if reduce else scores
