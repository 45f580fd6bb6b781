"""CLIP: an image tower and a text tower projected to one embedding space, plus the logit scale.

The model computes embeddings; losses live in ``clipforge.losses``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIPConfig
from .hf_text_tower import HFTextTower
from .layers import QuickGELU
from .modified_resnet import ModifiedResNet
from .text_transformer import TextTower
from .timm_tower import TimmTower
from .vision_transformer import VisionTransformer

__all__ = ["CLIP", "build_model", "MAX_LOGIT_SCALE"]

# OpenAI clips the learned temperature so logits are scaled by at most 100 (CLIP paper, 2.5).
MAX_LOGIT_SCALE = 100.0


class CLIP(TextTower):
    """``model(images, tokens) -> (image_features, text_features, logit_scale)``.

    Features are L2-normalised; ``logit_scale`` is the multiplier exp(s), at most 100.
    ``encode_image`` and ``encode_text`` return unnormalised features, as OpenAI's do.
    """

    # Embeddings and the temperature: no weight decay (see train/optim.py).
    no_weight_decay = ("positional_embedding", "logit_scale", "logit_bias", "text_projection_bias")

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        act_layer: type[nn.Module] = QuickGELU if config.quick_gelu else nn.GELU
        if config.vision.timm_model_name:
            self.visual: nn.Module = TimmTower(config.vision, config.embed_dim)
        elif config.vision.is_resnet:
            self.visual = ModifiedResNet(config.vision, config.embed_dim)
        else:
            self.visual = VisionTransformer(config.vision, config.embed_dim, act_layer)
        # A Hugging Face text tower lives under `text.` (open_clip's CustomTextCLIP names).
        self.text: HFTextTower | None = None
        if config.text.hf_model_name:
            self.text = HFTextTower(config.text, config.embed_dim)
            self.context_length, self.vocab_size = config.text.context_length, self.text.vocab_size
        else:
            self._build_text_tower(config.text, config.embed_dim, act_layer)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias: nn.Parameter | None = None
        if config.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI's reference initialisation scheme."""
        if self.text is None:  # transformers initialises its own encoders
            self._init_text_tower()
        if isinstance(self.visual, ModifiedResNet):
            self.visual.init_reference()

    @property
    def dtype(self) -> torch.dtype:
        if self.text is not None:
            return next(self.text.parameters()).dtype
        return self.text_projection.dtype

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) preprocessed images -> (batch, embed_dim) unnormalised features."""
        return self.visual(image.to(self._visual_dtype()))

    def _visual_dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    def encode_text(self, text: torch.Tensor, trim_padding: bool = True) -> torch.Tensor:
        if self.text is not None:
            return self.text.encode(text, trim_padding)
        return super().encode_text(text, trim_padding)

    @property
    def text_trimmable(self) -> bool:
        return False if self.text is not None else super().text_trimmable

    def text_pool_positions(self, text: torch.Tensor) -> torch.Tensor:
        if self.text is not None:  # pooled over its attention mask: no one position
            return torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
        return super().text_pool_positions(text)

    def text_features(self, text: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        if self.text is not None:  # pools over its attention mask, not at `eot`
            return self.text(text)
        return super().text_features(text, eot)

    def text_tower_parameters(self) -> list[nn.Parameter]:
        if self.text is not None:
            return list(self.text.parameters())
        return super().text_tower_parameters()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.text is not None:
            self.text.set_grad_checkpointing(enable)
        else:
            self.transformer.grad_checkpointing = enable
        if isinstance(self.visual, TimmTower):
            self.visual.set_grad_checkpointing(enable)
        elif isinstance(self.visual, ModifiedResNet):
            self.visual.grad_checkpointing = enable
        else:
            self.visual.transformer.grad_checkpointing = enable

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        image_features = None if image is None else F.normalize(self.encode_image(image), dim=-1)
        text_features = None if text is None else F.normalize(self.encode_text(text), dim=-1)
        return image_features, text_features, self.scale()

    def clamp_logit_scale_(self) -> None:
        """Keep the stored parameter within [0, ln 100] after an optimiser step (as OpenAI)."""
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))


def build_model(config: CLIPConfig) -> CLIP:
    return CLIP(config)
