"""Contrastive losses over a batch of normalised image and text features.

Kept apart from the model (the model computes embeddings). Both losses work across processes:
features are gathered with gradient, so N processes with B/N samples each compute the same loss
and - after DDP's gradient averaging, see ``world_size`` scaling below - the same gradients as
one process with B samples.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .config import CLIPConfig
from .distributed import all_gather_with_grad
from .errors import ConfigError, TrainingError

__all__ = ["ClipLoss", "SigLipLoss", "make_loss", "siglip_config"]

# Sigmoid-loss initialisation (Zhai et al. 2023, Sec. 3.3): t' = log 10, b = -10, so the many
# negatives start with a small loss instead of dominating the first steps.
SIGLIP_INIT_LOGIT_SCALE = math.log(10)
SIGLIP_INIT_LOGIT_BIAS = -10.0


def _check_world(world_size: int) -> None:
    """A world size > 1 without a process group would silently score only the local batch."""
    if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise TrainingError(
            f"the loss was built for {world_size} processes but no process group is running; "
            "call clipforge.distributed.init_distributed() first (under torchrun), or use world_size=1"
        )


class ClipLoss(torch.nn.Module):
    """Symmetric InfoNCE (CLIP paper, Fig. 3): mean of image->text and text->image cross-entropy.

    ``local_loss=False``: every process builds the full N×N logits (all rows, all columns).
    ``local_loss=True``: each process scores only its own rows against all columns (and its own
    columns against all rows); cheaper, and with gradient gathering gives the same gradients.

    Gradient bookkeeping: the gather's backward *sums* feature gradients over processes and DDP
    then *averages* parameter gradients, so both forms give exactly the single-process gradient.
    With ``gather_with_grad=False`` (open_clip's cheaper option: no all-reduce in backward) only
    the local slice carries gradient, scaled by ``world_size`` so the full form stays exact; the
    local form is then an approximation, as in open_clip.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        super().__init__()
        _check_world(world_size)
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        local_n = image_features.shape[0]
        if self.world_size > 1:
            all_image = all_gather_with_grad(image_features, self.gather_with_grad, self.rank)  # (N, dim)
            all_text = all_gather_with_grad(text_features, self.gather_with_grad, self.rank)
        else:
            all_image, all_text = image_features, text_features
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_text.T  # (local_n, N)
            logits_per_text = logit_scale * text_features @ all_image.T  # (local_n, N)
            labels = torch.arange(local_n, device=image_features.device) + self.rank * local_n
        else:
            logits_per_image = logit_scale * all_image @ all_text.T  # (N, N)
            logits_per_text = logits_per_image.T
            labels = torch.arange(all_image.shape[0], device=image_features.device)
        if logit_bias is not None:
            logits_per_image, logits_per_text = logits_per_image + logit_bias, logits_per_text + logit_bias
        loss = (F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels)) / 2
        return loss


class SigLipLoss(torch.nn.Module):
    """Sigmoid loss (Zhai et al. 2023): every image–text pair is an independent binary problem,
    ``-log σ(z · (t·cos + b))`` with z = +1 on the diagonal, -1 elsewhere, summed over columns
    and averaged over rows. The model needs a learnable bias: init t = log 10, b = -10
    (``siglip_config(cfg)``, i.e. ``init_logit_scale=math.log(10), init_logit_bias=-10``).

    Across processes each rank scores its rows against the gathered texts (one all-gather rather
    than the paper's ring of neighbour exchanges: the same numbers, simpler code).
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        _check_world(world_size)
        self.rank, self.world_size = rank, world_size

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        if logit_bias is None:
            raise ConfigError(
                "the sigmoid loss needs the model's logit_bias but it is None; build the model from "
                "clipforge.losses.siglip_config(config) (init_logit_bias=-10)"
            )
        local_n = image_features.shape[0]
        all_text = all_gather_with_grad(text_features, True, self.rank) if self.world_size > 1 else text_features
        logits = logit_scale * image_features @ all_text.T + logit_bias  # (local_n, N)
        labels = -torch.ones_like(logits)
        rows = torch.arange(local_n, device=logits.device)
        labels[rows, rows + self.rank * local_n] = 1.0
        total_n = local_n * self.world_size
        # Sum over this rank's rows / global N, times world_size for DDP's gradient averaging.
        return -F.logsigmoid(labels * logits.float()).sum() / total_n * self.world_size


def make_loss(name: str, rank: int = 0, world_size: int = 1, local_loss: bool = False, **kw) -> torch.nn.Module:
    """``"clip"`` -> :class:`ClipLoss`, ``"siglip"`` -> :class:`SigLipLoss` (which always gathers
    with gradient and is already local, so ``local_loss`` does not apply to it)."""
    if name == "clip":
        return ClipLoss(local_loss=local_loss, rank=rank, world_size=world_size, **kw)
    if name == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size, **kw)
    raise ConfigError(f"unknown loss {name!r}; choose 'clip' (InfoNCE) or 'siglip' (sigmoid)")


def siglip_config(config: CLIPConfig) -> CLIPConfig:
    """``config`` with the sigmoid loss's logit scale and bias initialisation."""
    return dataclasses.replace(config, init_logit_scale=SIGLIP_INIT_LOGIT_SCALE, init_logit_bias=SIGLIP_INIT_LOGIT_BIAS)
