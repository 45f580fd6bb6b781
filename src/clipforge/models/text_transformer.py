"""Causal text tower over BPE tokens, pooled at the end-of-text token.

OpenAI's checkpoints keep the text tower's parameters at the top level of the model
(``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
``text_projection``), so the tower is a mixin that CLIP inherits: the names stay the reference's
and the conversion tables stay short.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TextConfig
from .layers import LayerNorm, Transformer

__all__ = ["TextTower"]


class TextTower(nn.Module):
    """Mixin: builds the text tower's parameters on ``self`` and provides ``encode_text``."""

    context_length: int
    vocab_size: int

    def _build_text_tower(self, cfg: TextConfig, embed_dim: int, act_layer: type[nn.Module]) -> None:
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, act_layer)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))

    def _init_text_tower(self) -> None:
        """OpenAI's initialisation of the text tower (CLIP.initialize_parameters)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_reference()
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    def text_tower_parameters(self) -> list[nn.Parameter]:
        return [
            self.token_embedding.weight,
            self.positional_embedding,
            *self.transformer.parameters(),
            *self.ln_final.parameters(),
            self.text_projection,
        ]

    def encode_text(self, text: torch.Tensor, trim_padding: bool = True) -> torch.Tensor:
        """(batch, context_length) token ids -> (batch, embed_dim) unnormalised features.

        With ``trim_padding`` the tower runs only up to the longest end-of-text position in the
        batch. Exact: under the causal mask no kept position attends to a trimmed one.
        """
        if text.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, length), got {tuple(text.shape)}")
        eot = text.argmax(dim=-1)  # (batch,): the end-of-text token has the largest id
        if trim_padding and text.shape[0] > 0:
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
        """
        n = text.shape[1]
        dtype = self.text_projection.dtype
        x = self.token_embedding(text).to(dtype)  # (batch, n, width)
        x = x + self.positional_embedding[:n].to(dtype)
        x = self.transformer(x, is_causal=True)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (batch, width)
        return x @ self.text_projection  # (batch, embed_dim)
