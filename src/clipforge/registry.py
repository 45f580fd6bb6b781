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

from .config import CLIPConfig
from .errors import ConfigError

__all__ = ["MODEL_CONFIGS", "list_models", "get_model_config"]

_OPENAI_ARCHS = [
    "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
    "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336",
]  # fmt: skip

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
    return CLIPConfig.from_json(text)
