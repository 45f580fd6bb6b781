"""AdamW with parameter groups chosen by module type, and a warmup + cosine schedule.

No weight decay on: parameters of norm layers, biases of linear/conv layers, embedding tables,
and the direct parameters a module declares in ``no_weight_decay`` (positional/class
embeddings, the logit scale and bias). Everything else - the weight matrices - is decayed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import TrainingError

__all__ = ["param_groups", "make_optimizer", "lr_at", "NORM_TYPES"]

NORM_TYPES = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)
_WEIGHT_TYPES = (nn.Linear, nn.Conv2d)
_FUSED_DEVICES = ("cpu", "cuda")  # where torch has a fused AdamW kernel


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
    groups = [g for g in param_groups(model, weight_decay) if g["params"]]
    if not groups:
        raise TrainingError("no parameter requires a gradient: unlock a tower (train.lock_image/lock_text) or the run trains nothing")
    # fused: one kernel reads and writes each element once, where foreach makes a pass per
    # operation. On a 2-core CPU the AdamW step of tiny-vit (3.4M parameters, mostly the token
    # embedding) takes 1.3-1.5 ms fused vs 8.5-12 ms foreach vs 35 ms for-loop (best of 20).
    fused = all(p.device.type in _FUSED_DEVICES for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None, foreach=None if fused else True)


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to 0 at ``total``.
    A pure function of the step, so a resumed run follows the same curve."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))
