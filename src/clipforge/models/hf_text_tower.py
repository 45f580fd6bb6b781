"""A text tower on a Hugging Face encoder (XLM-RoBERTa, RoBERTa...), parameter for parameter
open_clip's ``HFTextEncoder``: ``transformer`` is the ``transformers`` model, ``proj`` the
projection to the shared embedding.

The encoder is built from its config alone (``AutoModel.from_config``: no weights fetched; the
CLIP checkpoint carries them). The config comes from ``KNOWN_HF_CONFIGS`` for the encoders of
open_clip's published models, so they build offline, else from a local directory holding a
``config.json``, else from the Hugging Face Hub (cached, or downloaded when allowed).
``transformers`` is imported when a tower is built, so ``import clipforge`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TextConfig
from ..errors import ConfigError

__all__ = ["HFTextTower", "KNOWN_HF_CONFIGS", "POOLERS", "PROJECTIONS", "hf_config"]

# open_clip's pooler names (hf_model.py). 'max_pooler' is left out: open_clip's fails on every
# input (masked_fill with an integer mask), so no published model uses it.
POOLERS = ("mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler")
PROJECTIONS = ("linear", "mlp", None)  # None: no projection, when the encoder width is embed_dim

_ROBERTA = {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 514,
            "type_vocab_size": 1, "layer_norm_eps": 1e-5, "hidden_act": "gelu"}  # fmt: skip
# The config.json of each encoder open_clip's published models use (huggingface.co/<name>), so
# those models build without the network.
KNOWN_HF_CONFIGS: dict[str, dict[str, Any]] = {
    "xlm-roberta-base": {"model_type": "xlm-roberta", "vocab_size": 250002, "hidden_size": 768,
                         "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, **_ROBERTA},
    "xlm-roberta-large": {"model_type": "xlm-roberta", "vocab_size": 250002, "hidden_size": 1024,
                          "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096, **_ROBERTA},
    "roberta-base": {"model_type": "roberta", "vocab_size": 50265, "hidden_size": 768,
                     "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, **_ROBERTA},
}  # fmt: skip


class HFTextTower(nn.Module):
    """(batch, n) token ids, padded with the encoder's pad id -> (batch, output_dim)."""

    def __init__(self, cfg: TextConfig, output_dim: int) -> None:
        super().__init__()
        if cfg.hf_pooler_type not in POOLERS:
            raise ConfigError(f"text_cfg.hf_pooler_type {cfg.hf_pooler_type!r} is not one of {', '.join(POOLERS)}")
        assert cfg.hf_model_name is not None
        config = hf_config(cfg.hf_model_name)
        self.pooler_type = cfg.hf_pooler_type
        self.pad_token_id = int(config.pad_token_id)
        self.vocab_size = int(config.vocab_size)
        self.output_dim = output_dim
        self.transformer = _encoder(config, with_pooler=cfg.hf_pooler_type == "cls_pooler")
        self.proj = _projection(cfg.hf_proj_type, int(config.hidden_size), output_dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        mask = (text != self.pad_token_id).long()  # (batch, n): 1 on tokens, 0 on padding
        out = self.transformer(input_ids=text, attention_mask=mask)
        return self.proj(self._pool(out, mask))  # (batch, output_dim)

    def encode(self, text: torch.Tensor, trim_padding: bool = True) -> torch.Tensor:
        """``forward`` after dropping the columns that are padding in every row: exact, as padding
        is masked out of attention and pooling and RoBERTa counts positions over tokens only."""
        if text.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, length), got {tuple(text.shape)}")
        if trim_padding and text.shape[0] > 0:
            used = (text != self.pad_token_id).any(dim=0).nonzero()  # (k, 1) columns with a token
            text = text[:, : int(used.max()) + 1 if len(used) else 1]
        return self(text)

    def _pool(self, out: Any, mask: torch.Tensor) -> torch.Tensor:
        hidden = out.last_hidden_state  # (batch, n, width)
        if self.pooler_type == "mean_pooler":
            summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)  # (batch, width)
            return summed / mask.sum(-1, keepdim=True)
        if self.pooler_type == "cls_pooler" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output  # (batch, width): the encoder's own dense + tanh pooler
        return hidden[:, 0, :]  # (batch, width): the first (<s> / [CLS]) token

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.transformer.gradient_checkpointing_enable()
        else:
            self.transformer.gradient_checkpointing_disable()


def hf_config(name: str) -> Any:
    """The ``transformers`` config for ``name``: a known encoder, a local directory with a
    ``config.json``, or a Hub id (from the Hugging Face cache, or downloaded when allowed)."""
    from transformers import AutoConfig

    if name in KNOWN_HF_CONFIGS:
        known = dict(KNOWN_HF_CONFIGS[name])
        return AutoConfig.for_model(known.pop("model_type"), **known)
    try:
        return AutoConfig.from_pretrained(name)
    except OSError as e:
        where = Path(name).expanduser()
        raise ConfigError(
            f"text_cfg.hf_model_name {name!r} is neither a known encoder ({', '.join(KNOWN_HF_CONFIGS)}), "
            f"a directory with a config.json, nor a cached Hugging Face model ({e}). Download the "
            f"model's config.json from https://huggingface.co/{name} into a directory such as "
            f"{where.name or 'encoder'}/ and set hf_model_name to that directory"
        ) from None


def _encoder(config: Any, with_pooler: bool) -> nn.Module:
    from transformers import AutoModel

    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(
            f"text_cfg.hf_model_name: {config.model_type} is an encoder-decoder model; "
            "only encoder models (RoBERTa, XLM-RoBERTa, BERT) are supported as text towers"
        )
    # open_clip builds the encoder's own pooler only for 'cls_pooler'; the weights must match.
    return AutoModel.from_config(config, add_pooling_layer=with_pooler)


def _projection(kind: str | None, width: int, output_dim: int) -> nn.Module:
    """open_clip's ``HFTextEncoder.proj``: ``proj.weight`` (linear) or ``proj.0/2.weight`` (mlp)."""
    if kind not in PROJECTIONS:
        raise ConfigError(f"text_cfg.hf_proj_type {kind!r} is not one of 'linear', 'mlp' or null")
    if kind == "linear":
        return nn.Linear(width, output_dim, bias=False)
    if kind == "mlp":
        hidden = (width + output_dim) // 2  # open_clip's choice
        return nn.Sequential(nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, output_dim, bias=False))
    if width != output_dim:
        raise ConfigError(
            f"text_cfg.hf_proj_type is null but the encoder width {width} differs from embed_dim "
            f"{output_dim}; set hf_proj_type to 'linear' or 'mlp'"
        )
    return nn.Identity()
