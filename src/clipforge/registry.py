"""Model names -> architecture configs. An explicit table; the JSON files are read on demand.

Names follow open_clip: ``ViT-B-32`` is the architecture with GELU (what open_clip trains) and
``ViT-B-32-quickgelu`` the one OpenAI's released weights use. OpenAI's own names
(``ViT-B/32``, ``RN50``...) are accepted by ``load`` for the published weights, see
``checkpoint.pretrained``.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib import resources

from .config import CLIPConfig, PreprocessConfig
from .errors import ConfigError

__all__ = ["MODEL_CONFIGS", "list_models", "get_model_config"]

_OPENAI_ARCHS = [
    "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
    "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336",
]  # fmt: skip

_TIMM_HF_ARCHS = [
    "convnext_base", "convnext_base_w", "convnext_base_w_320", "convnext_large_d", "convnext_large_d_320",
    "convnext_xxlarge", "roberta-ViT-B-32", "xlm-roberta-base-ViT-B-32", "xlm-roberta-large-ViT-H-14",
]  # fmt: skip

# open_clip's SigLIP / SigLIP 2 architectures (its files, unchanged: a timm_model_name that
# config.siglip_vit_fields turns into our own ViT with the attention-pooling head).
_SIGLIP_ARCHS = [
    "ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256", "ViT-B-16-SigLIP-384", "ViT-B-16-SigLIP-512", "ViT-B-16-SigLIP-i18n-256",
    "ViT-L-16-SigLIP-256", "ViT-L-16-SigLIP-384", "ViT-SO400M-14-SigLIP", "ViT-SO400M-14-SigLIP-378",
    "ViT-SO400M-14-SigLIP-384", "ViT-B-16-SigLIP2", "ViT-B-16-SigLIP2-256", "ViT-B-16-SigLIP2-384", "ViT-B-16-SigLIP2-512",
    "ViT-B-32-SigLIP2-256", "ViT-L-16-SigLIP2-256", "ViT-L-16-SigLIP2-384", "ViT-L-16-SigLIP2-512", "ViT-SO400M-14-SigLIP2",
    "ViT-SO400M-14-SigLIP2-378", "ViT-SO400M-16-SigLIP2-256", "ViT-SO400M-16-SigLIP2-384", "ViT-SO400M-16-SigLIP2-512",
    "ViT-gopt-16-SigLIP2-256", "ViT-gopt-16-SigLIP2-384",
]  # fmt: skip

# open_clip's other ViTs: LAION/DataComp's large ones, CLIPA (average pooling, LayerNorm after
# the pool), MetaCLIP 2 "worldwide" (pooled at the end-of-text id) and the small/medium ones.
_OPEN_CLIP_VITS = [
    "ViT-H-14", "ViT-H-14-quickgelu", "ViT-H-14-378", "ViT-H-14-378-quickgelu", "ViT-H-16", "ViT-g-14", "ViT-bigG-14",
    "ViT-bigG-14-quickgelu", "ViT-e-14", "ViT-L-14-280", "ViT-L-16", "ViT-L-16-320", "ViT-B-16-plus", "ViT-B-16-plus-240",
    "ViT-B-32-256", "ViT-B-32-plus-256", "ViT-M-16", "ViT-M-16-alt", "ViT-M-32", "ViT-M-32-alt", "ViT-S-16", "ViT-S-16-alt",
    "ViT-S-32", "ViT-S-32-alt", "ViT-L-14-CLIPA", "ViT-L-14-CLIPA-336", "ViT-H-14-CLIPA", "ViT-H-14-CLIPA-336",
    "ViT-bigG-14-CLIPA", "ViT-bigG-14-CLIPA-336", "ViT-H-14-worldwide", "ViT-H-14-worldwide-quickgelu",
    "ViT-H-14-worldwide-378", "ViT-L-14-worldwide", "ViT-L-14-worldwide-quickgelu", "ViT-bigG-14-worldwide", "ViT-bigG-14-worldwide-378",
]  # fmt: skip

# What each family's weights were trained with (open_clip's pretrained.py: _slpcfg, _apcfg).
_SIGLIP_PREPROCESS = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash")
_CLIPA_PREPROCESS = PreprocessConfig(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),  # ImageNet's
                                     interpolation="bilinear", resize_mode="squash")  # fmt: skip
_FAMILY_PREPROCESS = {
    **{name: _SIGLIP_PREPROCESS for name in _SIGLIP_ARCHS},
    **{name: _CLIPA_PREPROCESS for name in _OPEN_CLIP_VITS if "-CLIPA" in name},
}

# name -> JSON file in clipforge/model_configs
MODEL_CONFIGS: dict[str, str] = {
    **{name: f"{name}.json" for name in _OPENAI_ARCHS},
    **{f"{name}-quickgelu": f"{name}-quickgelu.json" for name in _OPENAI_ARCHS},
    "tiny-vit": "tiny-vit.json",
    "tiny-vit-quickgelu": "tiny-vit-quickgelu.json",
    "tiny-rn": "tiny-rn.json",
    "tiny-rn-quickgelu": "tiny-rn-quickgelu.json",
    # `clipforge demo`: a 48 px ViT sized to learn OpenMoji in ten minutes on two CPU cores.
    "demo": "demo.json",
    # timm ConvNeXt image towers and Hugging Face text towers (open_clip's files, unchanged).
    **{name: f"{name}.json" for name in _TIMM_HF_ARCHS},
    "tiny-convnext": "tiny-convnext.json",  # timm's convnext_atto at 32 px, for tests
    **{name: f"{name}.json" for name in _SIGLIP_ARCHS + _OPEN_CLIP_VITS},
    "tiny-siglip": "tiny-siglip.json",  # SigLIP's layout at width 64, for tests
}


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(MODEL_CONFIGS)


@cache
def get_model_config(name: str) -> CLIPConfig:
    """The architecture registered under ``name``; a clear error with close matches otherwise."""
    if name not in MODEL_CONFIGS:
        close = difflib.get_close_matches(name, MODEL_CONFIGS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown model {name!r}.{hint} Run `clipforge list-models` for the full list."
        )
    text = resources.files("clipforge.model_configs").joinpath(MODEL_CONFIGS[name]).read_text()
    config = CLIPConfig.from_json(text)
    family = _FAMILY_PREPROCESS.get(name)
    if family is not None and config.preprocess == PreprocessConfig():  # the file says nothing of it
        config = config.replace(preprocess=family)
    return config
