"""Building blocks shared by both towers, with OpenAI's parameter names.

Attention keeps ``nn.MultiheadAttention``'s names (``in_proj_weight``, ``in_proj_bias``,
``out_proj``) so OpenAI and open_clip state dicts load without renaming, but runs one fused QKV
projection and ``scaled_dot_product_attention`` in batch-first layout.
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LayerNorm", "QuickGELU", "SelfAttention", "ResidualAttentionBlock", "Transformer", "LayerScale",
           "LayerScaleBlock", "activation_layer", "mlp", "attention"]  # fmt: skip


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (OpenAI's fp16 recipe), cast back.

    When input and weights share a dtype other than fp16, torch's kernel already accumulates in
    fp32 (bf16 outputs match the upcast path to the last bit in all but ~1 in 50,000 elements),
    so it runs natively and skips two full-tensor copies per call.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype != torch.float16 and (self.weight is None or self.weight.dtype == dtype):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        x = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return x.to(dtype)


QUICK_GELU_ALPHA = 1.702


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's released weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(QUICK_GELU_ALPHA * x)


def activation_layer(quick_gelu: bool, approximate: str = "none") -> type[nn.Module]:
    """The MLP activation: QuickGELU (OpenAI's weights), GELU, or GELU's tanh approximation
    (``approximate="tanh"``: SigLIP's ``gelu_pytorch_tanh``, open_clip's ``act_kwargs``)."""
    if quick_gelu:
        return QuickGELU
    if approximate == "none":
        return nn.GELU
    return functools.partial(nn.GELU, approximate=approximate)  # type: ignore[return-value]


def mlp(width: int, hidden: int, act_layer: type[nn.Module]) -> nn.Sequential:
    """OpenAI's block MLP, with its names: c_fc, gelu, c_proj."""
    layers = [("c_fc", nn.Linear(width, hidden)), ("gelu", act_layer()), ("c_proj", nn.Linear(hidden, width))]
    return nn.Sequential(OrderedDict(layers))


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (CaiT, arXiv:2103.17239), open_clip's name ``gamma``."""

    no_weight_decay = ("gamma",)  # a 1-d scale, like a norm's weight

    def __init__(self, width: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


# Longest sequence for which the plain matmul-softmax-matmul attention trains faster on the CPU
# than torch's fused CPU kernel (its flash-attention backward is slow on short sequences: at the
# demo's 37 tokens x 4 heads x 32 dims, forward + backward takes 38 ms in bf16 and 12 ms in fp32,
# against 4.2 and 5.8 ms for the plain form). Measured on Zen 4, 2 threads: the plain form wins
# in bf16 up to ViT-B/16's 197 tokens (77 vs 102 ms) and loses from ViT-L/14's 257 (220 vs 171);
# in fp32 it wins up to ~77 tokens and loses at 197. Longer sequences keep the fused kernel,
# which also never materialises the (tokens x tokens) scores.
_PLAIN_ATTENTION_MAX_TOKENS = {torch.bfloat16: 224, torch.float32: 96}


@functools.lru_cache(maxsize=16)
def _causal_mask(n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)  # (n, n): True above the diagonal


def _plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool) -> torch.Tensor:
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (batch, heads, queries, keys)
    if is_causal:
        scores = scores.masked_fill(_causal_mask(scores.shape[-1], scores.device), float("-inf"))
    # softmax accumulated in fp32 (as the fused kernels do), then back to the matmul dtype
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype) @ v  # (batch, heads, queries, head_dim)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on (batch, heads, tokens, head_dim), computed in the
    plain form where that trains faster: on the CPU, with gradients, for short self-attention
    (the towers' usual 50-197 image tokens and <= 77 text tokens). Same result to rounding."""
    n = k.shape[-2]
    plain = (
        q.device.type == "cpu"
        and attn_mask is None
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad)
        and q.shape[-2] == n
        and n <= _PLAIN_ATTENTION_MAX_TOKENS.get(q.dtype, 0)
    )
    if plain:
        return _plain_attention(q, k, v, is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter layout."""

    no_weight_decay = ("in_proj_bias",)

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation, so random models match the reference scheme.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        b, n, d = x.shape  # (batch, tokens, width)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (batch, tokens, 3 * width)
        qkv = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (batch, heads, tokens, head_dim)
        out = attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(b, n, d)  # (batch, tokens, width)
        return self.out_proj(out)

    def cross(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Queries attend to ``context`` with the same fused weights: rows [0, width) of
        ``in_proj_weight`` project the queries, the rest the keys and values (as
        nn.MultiheadAttention's packed layout, and SigLIP's attention-pooling head)."""
        b, m, d = query.shape  # (batch, queries, width)
        n = context.shape[1]
        w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
        b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
        q = F.linear(query, w_q, b_q).view(b, m, self.heads, d // self.heads).transpose(1, 2)
        kv = F.linear(context, w_kv, b_kv).view(b, n, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # each (batch, heads, tokens, head_dim)
        out = attention(q, k, v)  # (batch, heads, queries, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(b, m, d))  # (batch, queries, width)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, act_layer: type[nn.Module], eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = mlp(width, int(width * mlp_ratio), act_layer)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))


class LayerScaleBlock(nn.Module):
    """x + ls_1(attn(ln_1(x))), then x + ls_2(mlp(ln_2(x))): open_clip's block with
    ``ls_init_value`` set, with its names. Deliberately not a ResidualAttentionBlock, so code that
    rebuilds those blocks from their weights (inference/packed.py) leaves this one as it is
    rather than dropping the scales."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, act_layer: type[nn.Module], eps: float, ls_init_value: float
    ) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = SelfAttention(width, heads)
        self.ls_1 = LayerScale(width, ls_init_value)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = mlp(width, int(width * mlp_ratio), act_layer)
        self.ls_2 = LayerScale(width, ls_init_value)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), is_causal=is_causal))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of residual attention blocks over (batch, tokens, width)."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        act_layer: type[nn.Module],
        eps: float = 1e-5,
        ls_init_value: float | None = None,
    ) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        blocks: list[nn.Module] = [
            ResidualAttentionBlock(width, heads, mlp_ratio, act_layer, eps)
            if ls_init_value is None
            else LayerScaleBlock(width, heads, mlp_ratio, act_layer, eps, ls_init_value)
            for _ in range(layers)
        ]
        self.resblocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, is_causal, use_reentrant=False)
            else:
                x = block(x, is_causal=is_causal)
        return x

    def init_reference(self) -> None:
        """OpenAI's text-transformer initialisation (CLIP.initialize_parameters)."""
        proj_std = (self.width**-0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
