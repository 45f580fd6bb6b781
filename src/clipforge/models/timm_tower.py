"""An image tower on a ``timm`` trunk (ConvNeXt...), parameter for parameter open_clip's
``TimmModel``: ``trunk`` is the timm network, ``head`` its pooling-free projection.

The trunk is built with ``pretrained=False`` (no network): CLIP checkpoints carry the trunk's
weights. ``timm`` is imported when a tower is built, so ``import clipforge`` stays fast.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..config import VisionConfig
from ..errors import ConfigError

__all__ = ["TimmTower", "TIMM_PROJECTIONS"]

# open_clip's timm_proj values: an added head ('linear', 'mlp'), the trunk's own classifier as the
# projection (''), or no projection at all ('none': the trunk's features are the embedding).
TIMM_PROJECTIONS = ("linear", "mlp", "", "none")


class TimmTower(nn.Module):
    """(batch, 3, H, W) -> (batch, output_dim): timm trunk, global pool, then ``head``."""

    def __init__(self, cfg: VisionConfig, output_dim: int) -> None:
        super().__init__()
        if cfg.timm_proj not in TIMM_PROJECTIONS:
            raise ConfigError(f"vision_cfg.timm_proj {cfg.timm_proj!r} is not one of {TIMM_PROJECTIONS}")
        if cfg.timm_pool in ("abs_attn", "rot_attn"):
            raise ConfigError(
                f"vision_cfg.timm_pool {cfg.timm_pool!r} (attention pooling) is not supported; "
                "use 'avg' or '' (the trunk's own pooling)"
            )
        self.image_size = cfg.image_size
        self.output_dim = output_dim
        self.trunk, width = _create_trunk(cfg, output_dim)
        self.head = _head(cfg, width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)  # (batch, trunk features), pooled (projected already when proj is '')
        return self.head(x)  # (batch, output_dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)


def _create_trunk(cfg: VisionConfig, output_dim: int) -> tuple[nn.Module, int]:
    """The timm network without its classifier, and the width it outputs (open_clip's rules)."""
    import timm

    kwargs = {} if cfg.timm_drop_path is None else {"drop_path_rate": cfg.timm_drop_path}
    name = cfg.timm_model_name
    try:
        if cfg.timm_proj in ("", "none"):  # the trunk's classifier projects ('') or is dropped
            classes = 0 if cfg.timm_proj == "none" else output_dim
            trunk = timm.create_model(name, pretrained=False, num_classes=classes, global_pool=cfg.timm_pool, **kwargs)
            return trunk, output_dim
        trunk = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ConfigError(f"vision_cfg.timm_model_name {name!r}: {e}; see timm.list_models()") from None
    # open_clip resets the pool only when one is configured; '' keeps e.g. ConvNeXt's head norm.
    trunk.reset_classifier(0, **({"global_pool": cfg.timm_pool} if cfg.timm_pool else {}))
    return trunk, trunk.num_features


def _head(cfg: VisionConfig, width: int, output_dim: int) -> nn.Sequential:
    """open_clip's ``TimmModel.head``: names ``proj`` (linear) or ``mlp.fc1/fc2`` (timm Mlp)."""
    from timm.layers import Mlp

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if cfg.timm_proj == "linear":
        layers["drop"] = nn.Dropout(cfg.timm_drop)
        layers["proj"] = nn.Linear(width, output_dim, bias=cfg.timm_proj_bias)
    elif cfg.timm_proj == "mlp":  # hidden 2 * output_dim, as open_clip
        layers["mlp"] = Mlp(width, 2 * output_dim, output_dim, drop=(cfg.timm_drop, 0), bias=(True, cfg.timm_proj_bias))
    return nn.Sequential(layers)
