"""Text tower: causal over BPE tokens and pooled at the end-of-text token (CLIP), or
bidirectional and pooled at the last position with a projection bias (SigLIP; open_clip's
``no_causal_mask``, ``pool_type="last"``, ``proj_bias``).

OpenAI's checkpoints keep the text tower's parameters at the top level of the model
(``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
``text_projection``), so the tower is a mixin that CLIP inherits: the names stay the reference's
and the conversion tables stay short.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TextConfig
from .layers import LayerNorm, QuickGELU, Transformer, activation_layer

__all__ = ["TextTower"]


class TextTower(nn.Module):
    """Mixin: builds the text tower's parameters on ``self`` and provides ``encode_text``."""

    context_length: int
    vocab_size: int
    text_pool_type: str = "argmax"
    text_causal: bool = True
    text_eos_id: int = 2

    def _build_text_tower(self, cfg: TextConfig, embed_dim: int, act_layer: type[nn.Module]) -> None:
        act_layer = activation_layer(act_layer is QuickGELU, cfg.act_approximate)
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.text_pool_type, self.text_causal, self.text_eos_id = cfg.pool_type, cfg.is_causal, cfg.eos_id
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(
            cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, act_layer, eps=cfg.norm_eps, ls_init_value=cfg.ls_init_value
        )
        self.ln_final = LayerNorm(cfg.width, eps=cfg.norm_eps)
        # OpenAI's (width, embed_dim) matrix; open_clip's proj_bias makes it an nn.Linear, whose
        # bias is kept here beside it so `text_projection` stays the reference's parameter.
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        self.text_projection_bias = nn.Parameter(torch.zeros(embed_dim)) if cfg.proj_bias else None

    def _init_text_tower(self) -> None:
        """OpenAI's initialisation of the text tower (CLIP.initialize_parameters)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_reference()
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)
        if self.text_projection_bias is not None:
            nn.init.zeros_(self.text_projection_bias)

    def text_tower_parameters(self) -> list[nn.Parameter]:
        bias = [] if self.text_projection_bias is None else [self.text_projection_bias]
        return [
            self.token_embedding.weight,
            self.positional_embedding,
            *self.transformer.parameters(),
            *self.ln_final.parameters(),
            self.text_projection,
            *bias,
        ]

    @property
    def text_trimmable(self) -> bool:
        """Whether running only up to the pooled position gives the same features: true under the
        causal mask when the pooled position does not depend on the length (not ``last``)."""
        return self.text_causal and self.text_pool_type != "last"

    def text_pool_positions(self, text: torch.Tensor) -> torch.Tensor:
        """(batch, n) token ids -> (batch,) the position each text is pooled at."""
        if self.text_pool_type == "argmax":
            return text.argmax(dim=-1)  # CLIP's end-of-text token has the largest id
        if self.text_pool_type == "eos":
            return (text == self.text_eos_id).int().argmax(dim=-1)
        position = 0 if self.text_pool_type == "first" else text.shape[1] - 1
        return torch.full((text.shape[0],), position, dtype=torch.long, device=text.device)

    def encode_text(self, text: torch.Tensor, trim_padding: bool = True) -> torch.Tensor:
        """(batch, context_length) token ids -> (batch, embed_dim) unnormalised features.

        With ``trim_padding`` the tower runs only up to the longest end-of-text position in the
        batch. Exact: under the causal mask no kept position attends to a trimmed one. A
        bidirectional tower (SigLIP) runs on the ids as given: pad them to its context length.
        """
        if text.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, length), got {tuple(text.shape)}")
        eot = self.text_pool_positions(text)  # (batch,)
        if trim_padding and self.text_trimmable and text.shape[0] > 0:
            text = text[:, : int(eot.max()) + 1]
        if text.shape[1] > self.context_length:
            raise ValueError(
                f"token ids of length {text.shape[1]} exceed the model's context length "
                f"{self.context_length}; tokenize with context_length={self.context_length}, truncate=True"
            )
        return self.text_features(text, eot)

    def text_features(self, text: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """(batch, n) token ids, (batch,) end-of-text positions -> (batch, embed_dim).

        The tower without the length check and trimming: a shape-stable function for
        ``torch.compile`` (trimming reads a tensor value, which would break the graph).
        A tower pooled at the last position (SigLIP) pools there whatever ``eot`` says.
        """
        n = text.shape[1]
        dtype = self.text_projection.dtype
        x = self.token_embedding(text).to(dtype)  # (batch, n, width)
        x = x + self.positional_embedding[:n].to(dtype)
        x = self.transformer(x, is_causal=self.text_causal)
        x = self.ln_final(x)
        if self.text_pool_type == "last":
            x = x[:, -1]  # (batch, width)
        else:
            x = x[torch.arange(x.shape[0], device=x.device), eot]  # (batch, width)
        x = x @ self.text_projection  # (batch, embed_dim)
        return x if self.text_projection_bias is None else x + self.text_projection_bias.to(dtype)
