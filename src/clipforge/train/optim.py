"""AdamW with parameter groups chosen by module type, and a warmup + cosine schedule.

No weight decay on: parameters of norm layers, biases of linear/conv layers, embedding tables,
and the direct parameters a module declares in ``no_weight_decay`` (positional/class
embeddings, the logit scale and bias). Everything else - the weight matrices - is decayed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["param_groups", "make_optimizer", "lr_at", "NORM_TYPES"]

NORM_TYPES = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)
_WEIGHT_TYPES = (nn.Linear, nn.Conv2d)


def _no_decay(module: nn.Module, name: str) -> bool:
    if isinstance(module, (*NORM_TYPES, nn.Embedding)):
        return True
    if isinstance(module, _WEIGHT_TYPES):
        return name == "bias"
    return name in getattr(module, "no_weight_decay", ())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                (no_decay if _no_decay(module, name) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   eps: float) -> torch.optim.AdamW:  # fmt: skip
    # foreach: one fused kernel per group instead of a Python loop over tensors.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=True)


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to 0 at ``total``.
    A pure function of the step, so a resumed run follows the same curve."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))
