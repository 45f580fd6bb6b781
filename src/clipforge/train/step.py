"""One optimisation step on a contrastive batch: plain, or with the exact gradient cache.

Gradient cache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): a contrastive loss couples every sample with every other, so ordinary gradient
accumulation over micro-batches changes the loss. Instead: (1) embed every micro-batch without
a graph, (2) compute the loss on the whole batch's features and its gradient w.r.t. those
features, (3) re-run each micro-batch with a graph and back-propagate the cached feature
gradients. Parameter gradients equal the full-batch ones; memory is that of one micro-batch.

BatchNorm (ResNet image towers) in train mode normalises with each micro-batch's statistics, so
gradients are those of the micro-batches' statistics, not the full batch's: exact for ViTs and
for ResNets in eval mode (frozen BN), close otherwise. The graph-free embedding pass would also
update the running statistics a second time; they are restored after it, so each sample moves
them once, as in ordinary gradient accumulation.

Under DistributedDataParallel every micro-batch but the last runs under ``no_sync()`` and the
logit scale and bias receive their cached gradients in the last backward, so DDP reduces every
parameter once per step (and with ``find_unused_parameters=False``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..errors import TrainingError

__all__ = ["StepResult", "SkipGuard", "train_step", "autocast_context"]


@dataclass(frozen=True)
class StepResult:
    loss: float
    skipped: bool
    grad_norm: float


class SkipGuard:
    """Counts consecutive skipped (non-finite) steps and stops the run after ``max_consecutive``."""

    def __init__(self, max_consecutive: int = 10) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def update(self, result: StepResult, step: int) -> None:
        if not result.skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.max_consecutive:
            raise TrainingError(
                f"{self.consecutive} consecutive steps up to step {step} had a non-finite loss or "
                "gradient; stopping with the last good checkpoint intact. Lower the learning rate, "
                "use bf16 instead of fp16, or check the data"
            )


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise TrainingError("fp16 training needs a GPU; use precision 'bf16' or 'fp32' on the CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    raise TrainingError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")


def _chunks(n: int, size: int | None) -> Iterator[slice]:
    size = size or n
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _core(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # the CLIP inside a DistributedDataParallel wrapper


def _logit_bias(model: torch.nn.Module) -> torch.Tensor | None:
    return getattr(_core(model), "logit_bias", None)


def _forward_loss(model, loss_fn, images, tokens, amp) -> torch.Tensor:
    with amp:
        image_features, text_features, scale = model(images, tokens)
        return loss_fn(image_features, text_features, scale, _logit_bias(model))


@contextlib.contextmanager
def _running_stats_kept(model: torch.nn.Module) -> Iterator[None]:
    """Undo the BatchNorm running-statistics updates made inside the block."""
    batch_norm = torch.nn.modules.batchnorm._BatchNorm
    norms = [m for m in model.modules() if isinstance(m, batch_norm) and m.training and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    yield
    for m, (mean, var, count) in zip(norms, saved):
        m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)


def _embed_without_graph(model, images, tokens, micro: int, amp) -> tuple[torch.Tensor, torch.Tensor]:
    with _running_stats_kept(_core(model)), torch.no_grad(), amp:
        feats = [model(images[s], tokens[s]) for s in _chunks(images.shape[0], micro)]
    image_features = torch.cat([f[0] for f in feats]).float().requires_grad_()  # (batch, dim)
    text_features = torch.cat([f[1] for f in feats]).float().requires_grad_()  # (batch, dim)
    return image_features, text_features


def _grad_cache_backward(model, loss_fn, images, tokens, micro: int, amp, scaler) -> torch.Tensor:
    image_features, text_features = _embed_without_graph(model, images, tokens, micro, amp)
    core = _core(model)
    # Scale and bias enter as detached leaves; their gradients are handed to the parameters in
    # the last micro-batch's backward, inside DDP's view, rather than here outside it.
    with torch.no_grad():
        scale = core.scale().requires_grad_()  # ()
    bias = _logit_bias(model)
    bias_leaf = None if bias is None else bias.detach().requires_grad_()
    with amp:
        loss = loss_fn(image_features, text_features, scale, bias_leaf)
    _backward(loss, scaler)  # the cached gradients carry the fp16 loss scale, if any
    chunks = list(_chunks(images.shape[0], micro))
    for i, s in enumerate(chunks):
        last = i == len(chunks) - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with amp:
                img, txt, live_scale = model(images[s], tokens[s])  # (micro, dim) ×2, ()
            outputs, grads = [img.float(), txt.float()], [image_features.grad[s], text_features.grad[s]]
            if last and scale.grad is not None:
                outputs, grads = outputs + [live_scale.float()], grads + [scale.grad]
            if last and bias_leaf is not None and bias_leaf.grad is not None:
                outputs, grads = outputs + [bias], grads + [bias_leaf.grad]
            torch.autograd.backward(outputs, grads)
    return loss.detach()


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def train_step(
    model: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    images: torch.Tensor,
    tokens: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    micro_batch: int | None = None,
    precision: str = "fp32",
    scaler: "torch.amp.GradScaler | None" = None,
    max_grad_norm: float | None = None,
) -> StepResult:
    """Forward, backward and optimiser step; a non-finite loss or gradient skips the update."""
    device = images.device
    amp = autocast_context(precision, device)
    optimizer.zero_grad(set_to_none=True)
    if micro_batch and micro_batch < images.shape[0]:
        loss = _grad_cache_backward(model, loss_fn, images, tokens, micro_batch, amp, scaler)
    else:
        loss = _forward_loss(model, loss_fn, images, tokens, amp)
        # Backward even when the loss is not finite: under DDP every process must join the
        # gradient all-reduce, and the non-finite gradient norm below then skips the step.
        _backward(loss, scaler)
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf)
    if not (torch.isfinite(loss) and torch.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # lets the fp16 scaler back off after an overflow
        return StepResult(float(loss.detach()), True, float(norm))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    core = _core(model)
    if hasattr(core, "clamp_logit_scale_"):
        core.clamp_logit_scale_()
    return StepResult(float(loss.detach()), False, float(norm))
