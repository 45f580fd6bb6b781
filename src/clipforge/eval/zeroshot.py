"""Zero-shot classification: class names × prompt templates -> averaged text embeddings ->
a linear classifier over image embeddings (CLIP paper, section 3.1.4)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.clip import CLIP
from ..factory import create_tokenizer

__all__ = ["zero_shot_classifier", "classification_metrics", "evaluate_zeroshot"]


@torch.no_grad()
def zero_shot_classifier(model: CLIP, classnames: Sequence[str], templates: Sequence[str],
                         batch_size: int = 512) -> torch.Tensor:  # fmt: skip
    """(embed_dim, n_classes): per class, every template's text embedding, normalised,
    averaged, normalised again. Prompts are embedded in batches across classes."""
    prompts = [t.format(c) if "{}" in t else t.replace("{c}", c) for c in classnames for t in templates]
    device = next(model.parameters()).device
    chunks, tokenize = [], create_tokenizer(model)  # the text tower's own tokenizer
    for start in range(0, len(prompts), batch_size):
        tokens = tokenize(prompts[start : start + batch_size])
        chunks.append(F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1))
    per_prompt = torch.cat(chunks).view(len(classnames), len(templates), -1)  # (classes, templates, dim)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).T  # (dim, classes)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict:
    """top-1, top-5, mean per-class recall, per-class accuracy and the confusion matrix."""
    k = min(5, n_classes)
    topk = logits.topk(k, dim=1).indices  # (n, k)
    correct = topk == labels[:, None]
    predicted = topk[:, 0]
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    support = confusion.sum(dim=1)
    per_class = confusion.diag().double() / support.clamp(min=1)
    present = support > 0
    return {
        "acc1": correct[:, 0].double().mean().item(),
        "acc5": correct.any(dim=1).double().mean().item(),
        "mean_per_class_recall": per_class[present].mean().item(),
        "per_class_accuracy": per_class.tolist(),
        "confusion_matrix": confusion.tolist(),
    }


@torch.no_grad()
def evaluate_zeroshot(model: CLIP, image_features: torch.Tensor, labels: torch.Tensor,
                      classnames: Sequence[str], templates: Sequence[str]) -> dict:  # fmt: skip
    """``image_features``: (n, dim) normalised embeddings of the evaluation images."""
    classifier = zero_shot_classifier(model, classnames, templates)
    logits = image_features.float() @ classifier  # (n, classes)
    return classification_metrics(logits, labels, len(classnames))
