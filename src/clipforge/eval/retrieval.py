"""Text->image and image->text recall@K with several captions per image (the COCO/Flickr30k
convention CLIP_benchmark uses)."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["retrieval_metrics"]


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: Sequence[int],
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:  # fmt: skip
    """``text_to_image[j]`` is the index of caption j's image.

    text->image ("image_retrieval"): a caption scores a hit if its image is in its top K.
    image->text ("text_retrieval"): an image scores a hit if any of its captions is in its top K.
    """
    owner = torch.as_tensor(list(text_to_image))
    scores = text_features.float() @ image_features.float().T  # (texts, images)
    positives = owner[:, None] == torch.arange(image_features.shape[0])[None, :]  # (texts, images)
    out: dict[str, float] = {}
    for k in ks:
        top_images = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (texts, k)
        out[f"image_retrieval_recall@{k}"] = positives.gather(1, top_images).any(dim=1).float().mean().item()
        top_texts = scores.T.topk(min(k, scores.shape[0]), dim=1).indices  # (images, k)
        out[f"text_retrieval_recall@{k}"] = positives.T.gather(1, top_texts).any(dim=1).float().mean().item()
    return out
