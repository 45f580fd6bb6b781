"""Features of an evaluation set, computed once; every task reuses them."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DataError
from ..inference.engine import as_engine
from ..inference.image_batches import batch_ranges, embed_image_batches
from ..models.clip import CLIP
from ..factory import create_tokenizer

__all__ = ["embed_pil_images", "embed_captions"]


def embed_pil_images(model: CLIP, images: Sequence[Callable[[], Image.Image]] | Sequence[Image.Image],
                     preprocess: Callable[[Image.Image], torch.Tensor], batch_size: int = 256) -> torch.Tensor:  # fmt: skip
    """(n, dim) normalised image features, through the fp32 engine and the shared batch loop.
    Items may be images or zero-argument loaders; one that cannot be read is an error (its row
    would be missing from the features, and every label after it would shift)."""
    engine = as_engine(model, "fp32", batch_size)
    items = [im if callable(im) else (lambda im=im: im) for im in images]
    rows = []
    for batch in embed_image_batches(engine, preprocess, items, batch_ranges(0, len(items), batch_size)):
        if batch.skipped:
            i, why = batch.skipped[0]
            raise DataError(f"evaluation image {i} could not be read ({why}); fix or remove it")
        rows.append(torch.from_numpy(batch.vectors))
    return torch.cat(rows) if rows else torch.zeros(0, model.config.embed_dim)


@torch.no_grad()
def embed_captions(model: CLIP, captions: Sequence[str], batch_size: int = 512) -> torch.Tensor:
    device = next(model.parameters()).device
    out, tokenize = [], create_tokenizer(model)  # the text tower's own tokenizer
    for start in range(0, len(captions), batch_size):
        tokens = tokenize(list(captions[start : start + batch_size]))
        out.append(F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)
