"""ViT image tower, parameter for parameter OpenAI's ``VisionTransformer``."""

from __future__ import annotations

import torch
from torch import nn

from ..config import VisionConfig
from .layers import LayerNorm, Transformer

__all__ = ["VisionTransformer"]


class VisionTransformer(nn.Module):
    """Patchify (conv without bias), class token, positional embedding, ln_pre, transformer,
    ln_post on the class token, projection without bias."""

    # Direct parameters that are embeddings (added to activations), not weight matrices:
    # the optimiser gives them no weight decay.
    no_weight_decay = ("class_embedding", "positional_embedding")

    def __init__(self, cfg: VisionConfig, output_dim: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        assert cfg.patch_size is not None and isinstance(cfg.layers, int)
        width = cfg.width
        self.image_size = cfg.image_size
        self.patch_size = cfg.patch_size
        self.grid_size = cfg.image_size // cfg.patch_size
        self.output_dim = output_dim
        scale = width**-0.5  # OpenAI's init scale for the embeddings and projection
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.num_heads, cfg.mlp_ratio, act_layer)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (batch, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (batch, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (batch, 1, width)
        x = torch.cat([cls, x], dim=1)  # (batch, 1 + grid*grid, width)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x[:, 0, :])  # (batch, width): the class token
        return x @ self.proj  # (batch, output_dim)
