"""ViT image tower, parameter for parameter OpenAI's ``VisionTransformer``, with open_clip's
options (open_clip/transformer.py) and SigLIP's ViT (timm's ``vit_*_siglip_*``).

- OpenAI / open_clip default: patchify (conv without bias), class token, positional embedding,
  ln_pre, transformer, ln_post on the class token, projection without bias.
- open_clip options: ``pool_type="avg"`` (mean of the patch tokens), ``final_ln_after_pool``,
  ``no_ln_pre``, ``attentional_pool`` (CoCa's pooler), ``ls_init_value`` (layer scale).
- SigLIP: conv with bias, no class token, no ln_pre, ln_post on every token, then the
  multihead attention-pooling head (``pool_type="map"``), and no projection.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import VisionConfig
from .layers import LayerNorm, QuickGELU, SelfAttention, Transformer, activation_layer, mlp

__all__ = ["VisionTransformer", "AttentionalPooler", "AttentionPoolingHead"]


class AttentionalPooler(nn.Module):
    """open_clip's ``AttentionalPooler`` (CoCa), with its names: learned queries attend to the
    tokens through ``nn.MultiheadAttention`` (whose key names depend on whether the query and
    token widths differ, hence the module itself). Its LayerNorms keep torch's eps, as open_clip's
    (the ViT's ``norm_kwargs`` do not reach them)."""

    def __init__(self, d_model: int, context_dim: int, heads: int, queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = LayerNorm(d_model)
        self.ln_k = LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(x)  # (batch, tokens, context_dim)
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)  # (batch, queries, d_model)
        return self.attn(q, x, x, need_weights=False)[0]  # (batch, queries, d_model)


class AttentionPoolingHead(nn.Module):
    """SigLIP's multihead attention-pooling ("MAP") head: one learned query attends to the
    tokens, then a residual MLP, as the second half of a transformer block.
    timm: ``AttentionPoolLatent`` (latent, q + kv, proj, norm, mlp); HF: ``head`` (probe, attention,
    layernorm, mlp)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act_layer: type[nn.Module], eps: float) -> None:
        super().__init__()
        # timm's init: trunc_normal(std=width ** -0.5) (timm/layers/attention_pool.py).
        self.query = nn.Parameter(torch.randn(1, width) * width**-0.5)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = mlp(width, int(width * mlp_ratio), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query.to(x.dtype).expand(x.shape[0], -1, -1)  # (batch, 1, width)
        x = self.attn.cross(q, x)  # (batch, 1, width)
        x = x + self.mlp(self.ln_2(x))
        return x[:, 0]  # (batch, width)


class VisionTransformer(nn.Module):
    """(batch, 3, H, W) -> (batch, output_dim); see the module docstring for the variants."""

    # Direct parameters that are embeddings (added to activations), not weight matrices:
    # the optimiser gives them no weight decay.
    no_weight_decay = ("class_embedding", "positional_embedding")

    def __init__(self, cfg: VisionConfig, output_dim: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        assert cfg.patch_size is not None and isinstance(cfg.layers, int)
        width, eps = cfg.width, cfg.norm_eps
        act_layer = activation_layer(act_layer is QuickGELU, cfg.act_approximate)
        self.image_size = cfg.image_size
        self.patch_size = cfg.patch_size
        self.grid_size = cfg.image_size // cfg.patch_size
        self.output_dim = output_dim
        self.pool_type = cfg.pool_type
        self.final_ln_after_pool = cfg.final_ln_after_pool
        self.prefix_tokens = int(cfg.class_token)
        scale = width**-0.5  # OpenAI's init scale for the embeddings and projection
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(scale * torch.randn(width)) if cfg.class_token else None
        tokens = self.grid_size**2 + self.prefix_tokens
        self.positional_embedding = nn.Parameter(scale * torch.randn(tokens, width))
        self.ln_pre = nn.Identity() if cfg.no_ln_pre else LayerNorm(width, eps=eps)
        self.transformer = Transformer(
            width, cfg.layers, cfg.num_heads, cfg.mlp_ratio, act_layer, eps=eps, ls_init_value=cfg.ls_init_value
        )
        self.attn_pool: nn.Module | None = None
        pool_dim = width
        if cfg.attentional_pool:
            self.attn_pool = AttentionalPooler(output_dim, width, cfg.attn_pooler_heads, cfg.attn_pooler_queries)
            pool_dim = output_dim
        elif cfg.pool_type == "map":
            self.attn_pool = AttentionPoolingHead(width, cfg.num_heads, cfg.mlp_ratio, act_layer, eps)
        self.ln_post = LayerNorm(pool_dim, eps=eps)
        self.proj = nn.Parameter(scale * torch.randn(pool_dim, output_dim)) if cfg.proj_type == "linear" else None
        if cfg.patch_bias:
            nn.init.zeros_(self.conv1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (batch, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (batch, grid*grid, width)
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (batch, 1, width)
            x = torch.cat([cls, x], dim=1)  # (batch, 1 + grid*grid, width)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)  # (batch, tokens, width)
        x = self._pool(x)  # (batch, pool_dim)
        return x if self.proj is None else x @ self.proj  # (batch, output_dim)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, width) -> (batch, pool_dim), as open_clip's ``VisionTransformer._pool``."""
        if self.pool_type == "map":  # SigLIP: ln_post on every token, then the pooling head
            assert self.attn_pool is not None
            return self.attn_pool(self.ln_post(x))
        if self.attn_pool is not None:  # CoCa's pooler; open_clip then pools over its queries
            return _global_pool(self.ln_post(self.attn_pool(x)), self.pool_type, skip=1)
        if self.final_ln_after_pool:
            return self.ln_post(_global_pool(x, self.pool_type, self.prefix_tokens))
        if self.pool_type == "tok":  # ln_post on the class token alone: the same values, cheaper
            return self.ln_post(x[:, 0, :])
        return _global_pool(self.ln_post(x), self.pool_type, self.prefix_tokens)


def _global_pool(x: torch.Tensor, pool_type: str, skip: int) -> torch.Tensor:
    """(batch, tokens, d) -> (batch, d): the first token, or the mean of those after ``skip``."""
    return x[:, 0] if pool_type == "tok" else x[:, skip:].mean(dim=1)
