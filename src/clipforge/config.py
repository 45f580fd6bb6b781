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

__all__ = ["VisionConfig", "TextConfig", "CLIPConfig", "PreprocessConfig", "apply_overrides", "SIGLIP_TIMM_VITS", "SIGLIP_VIT_FIELDS",
           "siglip_vit_fields"]

# CLIP paper, section 2.5: the temperature starts at 0.07, stored as a log-parameterised scale.
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)


class _NormActOptions:
    """The towers' open_clip ``norm_kwargs`` / ``act_kwargs``, read as LayerNorm eps and GELU
    approximation."""

    norm_kwargs: dict[str, Any] | None
    act_kwargs: dict[str, Any] | None

    @property
    def norm_eps(self) -> float:
        return _norm_eps(self.norm_kwargs)

    @property
    def act_approximate(self) -> str:
        return _act_approximate(self.act_kwargs)


@dataclass(frozen=True)
class VisionConfig(_NormActOptions):
    """Image tower. ``patch_size=None`` with ``layers`` a 4-tuple means the modified ResNet."""

    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768
    patch_size: int | None = 32
    head_width: int = 64  # heads = width // 64 (ViT) or width * 32 // 64 (ResNet), as OpenAI
    mlp_ratio: float = 4.0
    # A timm trunk (open_clip's TimmModel, e.g. ConvNeXt) instead of the ViT/ResNet above.
    timm_model_name: str | None = None
    timm_pool: str = "avg"  # timm global pool ('' keeps the trunk's own head pooling)
    timm_proj: str = "linear"  # 'linear', 'mlp' or 'none'
    timm_proj_bias: bool = False
    timm_drop: float = 0.0
    timm_drop_path: float | None = None
    # open_clip's own ViT options (open_clip/model.py, CLIPVisionCfg): same names, same defaults.
    ls_init_value: float | None = None  # layer scale (CaiT, arXiv:2103.17239); off when None
    attentional_pool: bool = False  # CoCa's attention pooler (arXiv:2205.01917) before ln_post
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    no_ln_pre: bool = False
    pool_type: str = "tok"  # tok: class token; avg: mean of the patch tokens; map: see below
    final_ln_after_pool: bool = False  # ln_post on the pooled vector instead of every token
    pos_embed_type: str = "learnable"
    act_kwargs: dict[str, Any] | None = None  # {"approximate": "tanh"}: GELU's tanh approximation
    norm_kwargs: dict[str, Any] | None = None  # {"eps": 1e-6}: the LayerNorms' epsilon
    # SigLIP's ViT (timm's vit_*_siglip_*): no class token, a patch embedding with bias, the
    # multihead attention-pooling head (pool_type="map") and no projection. Not keys of open_clip's
    # own ViT, so to_dict writes them only when they differ from these defaults.
    class_token: bool = True
    patch_bias: bool = False
    proj_type: str = "linear"  # "none": features are the tower's width (SigLIP)

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
        if self.timm_model_name:
            return  # the timm trunk ignores layers/width/patch_size
        if self.is_resnet:
            if len(self.layers) != 4:
                raise ConfigError(f"a ResNet image tower needs 4 stage depths, got {self.layers}")
            if self.image_size % 32:
                raise ConfigError(f"ResNet image_size must be a multiple of 32, got {self.image_size}")
        else:
            if not self.patch_size:
                raise ConfigError("a ViT image tower needs patch_size (or give 4 ResNet stage depths)")
            # timm's and HF's SigLIP so400m-patch14-384 drop the 6 pixels (384 = 27 * 14 + 6) that
            # no patch covers, as the stride-14 convolution does; elsewhere a remainder is a mistake.
            if self.image_size % self.patch_size and self.pool_type != "map":
                raise ConfigError(
                    f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
                )
            _check_vit_options(self)


@dataclass(frozen=True)
class TextConfig(_NormActOptions):
    """Causal text tower over byte-level BPE tokens."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    # A Hugging Face encoder (open_clip's HFTextEncoder, e.g. XLM-RoBERTa) instead of the above.
    hf_model_name: str | None = None
    hf_tokenizer_name: str | None = None
    hf_pooler_type: str = "mean_pooler"  # open_clip's defaults
    hf_proj_type: str = "mlp"
    # open_clip's TextTransformer options (open_clip/model.py, CLIPTextCfg): same names, defaults.
    ls_init_value: float | None = None
    no_causal_mask: bool = False  # bidirectional attention (SigLIP)
    pool_type: str = "argmax"  # argmax: the largest id (CLIP's end of text); last; first; eos
    eos_id: int = 2  # pool_type="eos" pools at the first occurrence of this id
    proj_bias: bool = False
    proj_type: str = "linear"  # 'none' (no text projection) is not built: an error naming the key
    act_kwargs: dict[str, Any] | None = None
    norm_kwargs: dict[str, Any] | None = None
    tokenizer_kwargs: dict[str, Any] | None = None  # for hf_tokenizer_name, e.g. {"clean": "canonicalize"}

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"text width {self.width} is not divisible by heads {self.heads}")
        if self.pool_type not in _TEXT_POOLS:
            raise ConfigError(
                f"text_cfg key 'pool_type' is {self.pool_type!r}; clipforge supports {', '.join(_TEXT_POOLS)}"
            )
        if self.proj_type != "linear":
            raise ConfigError(f"text_cfg key 'proj_type' = {self.proj_type!r} is not supported; clipforge builds 'linear'")
        _norm_eps(self.norm_kwargs, "text_cfg")
        _act_approximate(self.act_kwargs, "text_cfg")

    @property
    def is_causal(self) -> bool:
        return not self.no_causal_mask


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are prepared for the image tower, as open_clip's ``preprocess_cfg``: the
    weights were trained with it (OpenAI's statistics and resize + center crop unless given;
    SigLIP squashes to the square with mean = std = 0.5, CLIPA uses ImageNet's, bilinear)."""

    # OpenAI's training-image statistics (openai/CLIP clip/clip.py, as transforms.OPENAI_MEAN/STD)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"  # or bilinear
    resize_mode: str = "shortest"  # shortest side + center crop, or squash to the square

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ConfigError(f"preprocess_cfg key {name!r} needs 3 values (R, G, B), got {value}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ConfigError(f"preprocess_cfg key 'interpolation' is {self.interpolation!r}; clipforge builds bicubic or bilinear")
        if self.resize_mode not in ("shortest", "squash"):
            raise ConfigError(f"preprocess_cfg key 'resize_mode' is {self.resize_mode!r}; clipforge builds shortest or squash")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessConfig":
        # open_clip's other keys (fill_color, size) are the defaults' or the image size
        return cls(**{k: data[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in data})


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP: both towers, the shared embedding size, the activation and the image
    preprocessing the weights expect."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False  # OpenAI's weights use QuickGELU; open_clip trains with GELU
    init_logit_scale: float = DEFAULT_LOGIT_SCALE
    init_logit_bias: float | None = None  # set (e.g. -10) for the sigmoid loss
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    # --- JSON (open_clip layout) -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        vision = dataclasses.asdict(self.vision)
        if isinstance(vision["layers"], tuple):
            vision["layers"] = list(vision["layers"])
        out: dict[str, Any] = {
            "embed_dim": self.embed_dim,
            "quick_gelu": self.quick_gelu,
            "vision_cfg": _drop_defaults(_drop_unused(vision, "timm_"), _SIGLIP_VIT_DEFAULTS),
            "text_cfg": _drop_unused(dataclasses.asdict(self.text), "hf_"),
            "init_logit_scale": self.init_logit_scale,
        }
        if self.init_logit_bias is not None:
            out["init_logit_bias"] = self.init_logit_bias
        if self.preprocess != PreprocessConfig():  # written only when not OpenAI's
            out["preprocess_cfg"] = self.preprocess.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CLIPConfig":
        try:
            vision = _build(VisionConfig, siglip_vit_fields(data.get("vision_cfg", {})))
            text = _build(TextConfig, data.get("text_cfg", {}))
            return cls(
                embed_dim=int(data["embed_dim"]),
                vision=vision,
                text=text,
                quick_gelu=bool(data.get("quick_gelu", False)),
                init_logit_scale=float(data.get("init_logit_scale", DEFAULT_LOGIT_SCALE)),
                init_logit_bias=data.get("init_logit_bias"),
                preprocess=PreprocessConfig.from_dict(data.get("preprocess_cfg") or {}),
            )
        except KeyError as e:
            raise ConfigError(f"model config is missing the key {e.args[0]!r}") from None

    def __post_init__(self) -> None:
        v, t = self.vision, self.text
        if not v.is_resnet and not v.timm_model_name and v.proj_type == "none" and v.width != self.embed_dim:
            raise ConfigError(
                f"vision_cfg key 'proj_type' is 'none', so the image features are the tower's width "
                f"{v.width}; embed_dim must equal it, got {self.embed_dim}"
            )
        for tower, cfg in (("vision_cfg", v.act_kwargs), ("text_cfg", t.act_kwargs)):
            if self.quick_gelu and cfg:
                raise ConfigError(f"{tower} key 'act_kwargs' {cfg} applies to GELU; quick_gelu is set")

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
_IGNORED_KEYS = {"output_tokens", "proj", "timm_model_pretrained", "hf_model_pretrained"}

# --- open_clip ViT options: which values clipforge builds ----------------------------------------
_VISION_POOLS = ("tok", "avg", "map")
_TEXT_POOLS = ("argmax", "last", "first", "eos")
_SIGLIP_VIT_DEFAULTS = {"class_token": True, "patch_bias": False, "proj_type": "linear"}


def _check_vit_options(v: "VisionConfig") -> None:
    """Unsupported values of open_clip's ViT keys are errors that name the key."""
    problems = {
        "pool_type": v.pool_type not in _VISION_POOLS,
        "attentional_pool": v.attentional_pool not in (False, True),  # 'parallel'/'cascade': WIP upstream
        "pos_embed_type": v.pos_embed_type != "learnable",
        "proj_type": v.proj_type not in ("linear", "none"),
    }
    bad = [k for k, wrong in problems.items() if wrong]
    if bad:
        raise ConfigError(
            f"vision_cfg key {bad[0]!r} = {getattr(v, bad[0])!r} is not supported; clipforge builds "
            f"pool_type {'/'.join(_VISION_POOLS)}, attentional_pool true/false, pos_embed_type "
            "'learnable', proj_type 'linear'/'none'"
        )
    if v.pool_type == "tok" and not v.class_token:
        raise ConfigError("vision_cfg key 'pool_type' is 'tok' but class_token is false: pool 'avg' or 'map'")
    if v.pool_type == "map" and v.attentional_pool:
        raise ConfigError("vision_cfg keys 'pool_type' = 'map' and 'attentional_pool' exclude each other")
    _norm_eps(v.norm_kwargs, "vision_cfg")
    _act_approximate(v.act_kwargs, "vision_cfg")


def _norm_eps(kwargs: dict[str, Any] | None, tower: str = "") -> float:
    """open_clip's LayerNorm epsilon: torch's default 1e-5 unless norm_kwargs says otherwise."""
    kwargs = kwargs or {}
    if set(kwargs) - {"eps"}:
        raise ConfigError(f"{tower} key 'norm_kwargs' may only set 'eps', got {sorted(kwargs)}")
    return float(kwargs.get("eps", 1e-5))


def _act_approximate(kwargs: dict[str, Any] | None, tower: str = "") -> str:
    """GELU's ``approximate`` argument: 'none' (erf, exact) or 'tanh' (SigLIP 2's text tower)."""
    kwargs = kwargs or {}
    if set(kwargs) - {"approximate"} or kwargs.get("approximate", "none") not in ("none", "tanh"):
        raise ConfigError(f"{tower} key 'act_kwargs' may only set approximate 'none'/'tanh', got {kwargs}")
    return str(kwargs.get("approximate", "none"))


def _drop_defaults(cfg: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not (k in defaults and v == defaults[k])}


# --- timm's SigLIP ViTs as clipforge ViTs ------------------------------------------------------
# open_clip builds SigLIP's image tower with timm (``timm_model_name``); clipforge builds the same
# network as its own ViT and checkpoint/open_clip.py maps timm's keys. Architectures from
# timm/models/vision_transformer.py (vit_*_siglip_*): all have class_token=False,
# global_pool='map', LayerNorm eps 1e-6 and no pre-norm; timm's default activation is erf GELU,
# 'gelu_tanh' where the model function says so.
# name -> (image_size, patch_size, width, layers, heads, mlp_ratio, gelu_tanh)
SIGLIP_TIMM_VITS: dict[str, tuple[int, int, int, int, int, float, bool]] = {
    "vit_base_patch32_siglip_256": (256, 32, 768, 12, 12, 4.0, True),
    "vit_base_patch16_siglip_224": (224, 16, 768, 12, 12, 4.0, False),
    "vit_base_patch16_siglip_256": (256, 16, 768, 12, 12, 4.0, False),
    "vit_base_patch16_siglip_384": (384, 16, 768, 12, 12, 4.0, False),
    "vit_base_patch16_siglip_512": (512, 16, 768, 12, 12, 4.0, False),
    "vit_large_patch16_siglip_256": (256, 16, 1024, 24, 16, 4.0, False),
    "vit_large_patch16_siglip_384": (384, 16, 1024, 24, 16, 4.0, False),
    "vit_large_patch16_siglip_512": (512, 16, 1024, 24, 16, 4.0, True),
    "vit_so400m_patch14_siglip_224": (224, 14, 1152, 27, 16, 3.7362, False),
    "vit_so400m_patch14_siglip_378": (378, 14, 1152, 27, 16, 3.7362, False),
    "vit_so400m_patch14_siglip_384": (384, 14, 1152, 27, 16, 3.7362, False),
    "vit_so400m_patch16_siglip_256": (256, 16, 1152, 27, 16, 3.7362, True),
    "vit_so400m_patch16_siglip_384": (384, 16, 1152, 27, 16, 3.7362, True),
    "vit_so400m_patch16_siglip_512": (512, 16, 1152, 27, 16, 3.7362, True),
    "vit_giantopt_patch16_siglip_256": (256, 16, 1536, 40, 16, 4.0, True),
    "vit_giantopt_patch16_siglip_384": (384, 16, 1536, 40, 16, 4.0, True),
}
# The SigLIP ViT's fixed parts, in clipforge's keys.
SIGLIP_VIT_FIELDS: dict[str, Any] = {
    "class_token": False, "patch_bias": True, "no_ln_pre": True, "pool_type": "map",
    "proj_type": "none", "norm_kwargs": {"eps": 1e-6},
}  # fmt: skip
_ARCH_KEYS = ("image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio")


def siglip_vit_fields(vision: dict[str, Any]) -> dict[str, Any]:
    """open_clip's ``vision_cfg`` for a timm SigLIP ViT -> clipforge's ViT keys; others unchanged.

    A timm SigLIP ViT is a name of ``SIGLIP_TIMM_VITS``, or a name with ``_siglip_`` in it,
    ``timm_pool: "map"`` and the architecture written beside it (``image_size``, ``patch_size``, ``width``, ``layers``,
    ``head_width``, ``mlp_ratio``, ``act_kwargs``: what ``checkpoint.open_clip`` writes). Explicit
    keys that contradict the named architecture are an error naming the key.
    """
    name = vision.get("timm_model_name")
    registered = vision.get("timm_pool") == "map" and "_siglip_" in (name or "")  # e.g. one a test registers
    if not name or (name not in SIGLIP_TIMM_VITS and not registered):
        return vision
    if vision.get("timm_proj", "linear") != "none":
        raise ConfigError(f"vision_cfg key 'timm_proj' must be 'none' for the SigLIP ViT {name!r}")
    arch = {k: vision[k] for k in (*_ARCH_KEYS, "act_kwargs") if k in vision}
    if name in SIGLIP_TIMM_VITS:
        size, patch, width, layers, heads, mlp, tanh = SIGLIP_TIMM_VITS[name]
        named = dict(zip(_ARCH_KEYS, (size, patch, width, layers, width // heads, mlp), strict=True))
        named["act_kwargs"] = {"approximate": "tanh"} if tanh else None
        if "act_kwargs" in arch:  # {} and None both mean erf GELU
            arch["act_kwargs"] = arch["act_kwargs"] or None
        clash = [k for k, v in arch.items() if v != named[k]]
        if clash:
            raise ConfigError(
                f"vision_cfg key {clash[0]!r} = {arch[clash[0]]!r} contradicts timm's {name} ({named[clash[0]]!r})"
            )
        arch = named
    missing = [k for k in _ARCH_KEYS if k not in arch]
    if missing:
        raise ConfigError(f"vision_cfg for the timm SigLIP ViT {name!r} is missing the key {missing[0]!r}")
    return {**arch, **SIGLIP_VIT_FIELDS}


def _drop_unused(cfg: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Leave out the timm_*/hf_* keys of a tower that does not use them: open_clip picks its
    timm/HF towers by the key's presence, not its value (``hf_tokenizer_name`` stays when set)."""
    if cfg.get(f"{prefix}model_name") is not None:
        return cfg
    return {k: v for k, v in cfg.items() if not (k.startswith(prefix) and (v is None or k in _TOWER_ONLY))}


_TOWER_ONLY = {"timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "hf_pooler_type", "hf_proj_type"}


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
