"""Model architecture as data: frozen dataclasses, read from and written to JSON.

The JSON layout is open_clip's (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``) so
its model config files can be read unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["VisionConfig", "TextConfig", "CLIPConfig", "apply_overrides"]

# CLIP paper, section 2.5: the temperature starts at 0.07, stored as a log-parameterised scale.
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)


@dataclass(frozen=True)
class VisionConfig:
    """Image tower. ``patch_size=None`` with ``layers`` a 4-tuple means the modified ResNet."""

    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768
    patch_size: int | None = 32
    head_width: int = 64  # heads = width // 64 (ViT) or width * 32 // 64 (ResNet), as OpenAI
    mlp_ratio: float = 4.0

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple)

    @property
    def num_heads(self) -> int:
        features = self.width * 32 if self.is_resnet else self.width
        return max(1, features // self.head_width)

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.is_resnet:
            if len(self.layers) != 4:
                raise ConfigError(f"a ResNet image tower needs 4 stage depths, got {self.layers}")
            if self.image_size % 32:
                raise ConfigError(f"ResNet image_size must be a multiple of 32, got {self.image_size}")
        else:
            if not self.patch_size:
                raise ConfigError("a ViT image tower needs patch_size (or give 4 ResNet stage depths)")
            if self.image_size % self.patch_size:
                raise ConfigError(
                    f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
                )


@dataclass(frozen=True)
class TextConfig:
    """Causal text tower over byte-level BPE tokens."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"text width {self.width} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP: both towers, the shared embedding size and the activation."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False  # OpenAI's weights use QuickGELU; open_clip trains with GELU
    init_logit_scale: float = DEFAULT_LOGIT_SCALE
    init_logit_bias: float | None = None  # set (e.g. -10) for the sigmoid loss

    # --- JSON (open_clip layout) -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        vision = dataclasses.asdict(self.vision)
        if isinstance(vision["layers"], tuple):
            vision["layers"] = list(vision["layers"])
        out: dict[str, Any] = {
            "embed_dim": self.embed_dim,
            "quick_gelu": self.quick_gelu,
            "vision_cfg": vision,
            "text_cfg": dataclasses.asdict(self.text),
            "init_logit_scale": self.init_logit_scale,
        }
        if self.init_logit_bias is not None:
            out["init_logit_bias"] = self.init_logit_bias
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CLIPConfig":
        try:
            vision = _build(VisionConfig, data.get("vision_cfg", {}))
            text = _build(TextConfig, data.get("text_cfg", {}))
            return cls(
                embed_dim=int(data["embed_dim"]),
                vision=vision,
                text=text,
                quick_gelu=bool(data.get("quick_gelu", False)),
                init_logit_scale=float(data.get("init_logit_scale", DEFAULT_LOGIT_SCALE)),
                init_logit_bias=data.get("init_logit_bias"),
            )
        except KeyError as e:
            raise ConfigError(f"model config is missing the key {e.args[0]!r}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CLIPConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"model config is not valid JSON: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "CLIPConfig":
        return cls.from_json(Path(path).read_text())

    def replace(self, **changes: Any) -> "CLIPConfig":
        return dataclasses.replace(self, **changes)


# Keys that open_clip's configs carry for architectures we do not build; reading them is fine
# as long as they hold the default meaning.
_IGNORED_KEYS = {"output_tokens", "hf_model_name", "hf_tokenizer_name", "proj", "pool_type"}


def _build(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - _IGNORED_KEYS
    if unknown:
        raise ConfigError(
            f"{cls.__name__} has no field(s) {sorted(unknown)}; valid fields: {sorted(names)}"
        )
    return cls(**{k: v for k, v in data.items() if k in names})


def apply_overrides(obj: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of a (nested) frozen dataclass with dotted keys replaced.

    ``apply_overrides(cfg, {"vision.width": 128})``. An unknown key raises ConfigError listing
    the valid keys at that level.
    """
    for dotted, value in overrides.items():
        obj = _set_dotted(obj, dotted.split("."), value, dotted)
    return obj


def _set_dotted(obj: Any, parts: list[str], value: Any, dotted: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    head = parts[0]
    if head not in names:
        raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {', '.join(names)}")
    current = getattr(obj, head)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"config key {dotted!r}: {head!r} has no sub-keys")
        value = _set_dotted(current, parts[1:], value, dotted)
    return dataclasses.replace(obj, **{head: value})
