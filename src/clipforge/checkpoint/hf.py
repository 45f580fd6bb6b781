"""Hugging Face ``transformers.CLIPModel`` and ``SiglipModel`` <-> clipforge, one explicit key
table each (the transformer blocks share ``LAYER_KEYS``).

HF splits OpenAI's fused ``in_proj`` into q/k/v, stores projections as ``nn.Linear`` weights
(the transpose of OpenAI's matrices) and keeps position embeddings in ``nn.Embedding``.
HF has no ResNet CLIP, so only ViT models convert; ``CLIPModel`` expresses OpenAI's ViT only (class
token, ln_pre, no layer scale...), ``SiglipModel`` SigLIP's (and SigLIP 2's fixed-resolution
checkpoints, which are ``SiglipModel`` too; the NaFlex ``Siglip2Model`` is not supported). What a
format cannot express is an error naming the key. Reading an HF directory needs only its
``config.json`` and weights; transformers itself is not imported.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..config import CLIPConfig, PreprocessConfig, TextConfig, VisionConfig
from ..errors import CheckpointError, ConfigError
from ..models.clip import CLIP

__all__ = ["preprocess_from_hf", "TOP_LEVEL_KEYS", "SIGLIP_TOP_LEVEL_KEYS", "LAYER_KEYS", "to_hf_state_dict", "from_hf_state_dict",
           "config_from_hf", "config_to_hf", "hf_model_type", "load_hf_dir", "save_hf_dir"]  # fmt: skip

Transform = Callable[[torch.Tensor], torch.Tensor]
_same: Transform = lambda t: t  # noqa: E731
_t: Transform = lambda t: t.t().contiguous()  # noqa: E731  OpenAI's x @ W  vs  HF's Linear (x W^T)
_to_1: Transform = lambda t: t.reshape(1)  # noqa: E731  our scalar -> SiglipModel's (1,)
_to_scalar: Transform = lambda t: t.reshape(())  # noqa: E731
_to_probe: Transform = lambda t: t.unsqueeze(0)  # noqa: E731  our (1, width) query -> HF's (1, 1, width) probe
_from_probe: Transform = lambda t: t.reshape(t.shape[-2], t.shape[-1])  # noqa: E731

# ours -> (HF key, ours->HF transform, HF->ours transform)
TOP_LEVEL_KEYS: dict[str, tuple[str, Transform, Transform]] = {
    "logit_scale": ("logit_scale", _same, _same),
    "token_embedding.weight": ("text_model.embeddings.token_embedding.weight", _same, _same),
    "positional_embedding": ("text_model.embeddings.position_embedding.weight", _same, _same),
    "ln_final.weight": ("text_model.final_layer_norm.weight", _same, _same),
    "ln_final.bias": ("text_model.final_layer_norm.bias", _same, _same),
    "text_projection": ("text_projection.weight", _t, _t),
    "visual.class_embedding": ("vision_model.embeddings.class_embedding", _same, _same),
    "visual.positional_embedding": ("vision_model.embeddings.position_embedding.weight", _same, _same),
    "visual.conv1.weight": ("vision_model.embeddings.patch_embedding.weight", _same, _same),
    "visual.ln_pre.weight": ("vision_model.pre_layrnorm.weight", _same, _same),  # HF's spelling
    "visual.ln_pre.bias": ("vision_model.pre_layrnorm.bias", _same, _same),
    "visual.ln_post.weight": ("vision_model.post_layernorm.weight", _same, _same),
    "visual.ln_post.bias": ("vision_model.post_layernorm.bias", _same, _same),
    "visual.proj": ("visual_projection.weight", _t, _t),
}

# transformers.SiglipModel: bidirectional text tower pooled at the last position with a biased
# head, ViT without class token or ln_pre, and the attention-pooling head (models/vision_transformer.py).
SIGLIP_TOP_LEVEL_KEYS: dict[str, tuple[str, Transform, Transform]] = {
    "logit_scale": ("logit_scale", _to_1, _to_scalar),
    "logit_bias": ("logit_bias", _to_1, _to_scalar),
    "token_embedding.weight": ("text_model.embeddings.token_embedding.weight", _same, _same),
    "positional_embedding": ("text_model.embeddings.position_embedding.weight", _same, _same),
    "ln_final.weight": ("text_model.final_layer_norm.weight", _same, _same),
    "ln_final.bias": ("text_model.final_layer_norm.bias", _same, _same),
    "text_projection": ("text_model.head.weight", _t, _t),
    "text_projection_bias": ("text_model.head.bias", _same, _same),
    "visual.conv1.weight": ("vision_model.embeddings.patch_embedding.weight", _same, _same),
    "visual.conv1.bias": ("vision_model.embeddings.patch_embedding.bias", _same, _same),
    "visual.positional_embedding": ("vision_model.embeddings.position_embedding.weight", _same, _same),
    "visual.ln_post.weight": ("vision_model.post_layernorm.weight", _same, _same),
    "visual.ln_post.bias": ("vision_model.post_layernorm.bias", _same, _same),
    "visual.attn_pool.query": ("vision_model.head.probe", _to_probe, _from_probe),
    "visual.attn_pool.attn.in_proj_weight": ("vision_model.head.attention.in_proj_weight", _same, _same),
    "visual.attn_pool.attn.in_proj_bias": ("vision_model.head.attention.in_proj_bias", _same, _same),
    "visual.attn_pool.attn.out_proj.weight": ("vision_model.head.attention.out_proj.weight", _same, _same),
    "visual.attn_pool.attn.out_proj.bias": ("vision_model.head.attention.out_proj.bias", _same, _same),
    "visual.attn_pool.ln_2.weight": ("vision_model.head.layernorm.weight", _same, _same),
    "visual.attn_pool.ln_2.bias": ("vision_model.head.layernorm.bias", _same, _same),
    "visual.attn_pool.mlp.c_fc.weight": ("vision_model.head.mlp.fc1.weight", _same, _same),
    "visual.attn_pool.mlp.c_fc.bias": ("vision_model.head.mlp.fc1.bias", _same, _same),
    "visual.attn_pool.mlp.c_proj.weight": ("vision_model.head.mlp.fc2.weight", _same, _same),
    "visual.attn_pool.mlp.c_proj.bias": ("vision_model.head.mlp.fc2.bias", _same, _same),
}
_SIGLIP_MARKER = "vision_model.head.probe"

# Per transformer block, relative to ours "<tower>transformer.resblocks.{i}." and HF
# "<tower>_model.encoder.layers.{i}.". The fused in_proj is handled separately (q, k, v order).
LAYER_KEYS: dict[str, str] = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOWERS = {"": "text_model.encoder.layers", "visual.": "vision_model.encoder.layers"}
# Buffers HF may save that carry no weights.
_HF_IGNORED_SUFFIXES = ("position_ids",)


def _layer_count(keys: list[str], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in keys if k.startswith(prefix)})


def to_hf_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    table = SIGLIP_TOP_LEVEL_KEYS if hf_model_type(model.config) == "siglip" else TOP_LEVEL_KEYS
    ours = model.state_dict()
    out = {hf: fwd(ours[key]) for key, (hf, fwd, _) in table.items()}
    for tower, hf_prefix in _TOWERS.items():
        prefix = f"{tower}transformer.resblocks."
        for i in range(_layer_count(list(ours), prefix)):
            src, dst = f"{prefix}{i}.", f"{hf_prefix}.{i}."
            for key, hf_key in LAYER_KEYS.items():
                out[dst + hf_key] = ours[src + key]
            for part, w, b in zip("qkv", ours[src + "attn.in_proj_weight"].chunk(3), ours[src + "attn.in_proj_bias"].chunk(3)):
                out[f"{dst}self_attn.{part}_proj.weight"] = w
                out[f"{dst}self_attn.{part}_proj.bias"] = b
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def from_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k: v for k, v in sd.items() if not k.endswith(_HF_IGNORED_SUFFIXES)}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"Hugging Face checkpoint is missing key {key!r}")
        used.add(key)
        return sd[key]

    table = SIGLIP_TOP_LEVEL_KEYS if _SIGLIP_MARKER in sd else TOP_LEVEL_KEYS
    for key, (hf, _, back) in table.items():
        out[key] = back(take(hf))
    for tower, hf_prefix in _TOWERS.items():
        for i in range(_layer_count(list(sd), f"{hf_prefix}.")):
            src, dst = f"{hf_prefix}.{i}.", f"{tower}transformer.resblocks.{i}."
            for key, hf_key in LAYER_KEYS.items():
                out[dst + key] = take(src + hf_key)
            out[dst + "attn.in_proj_weight"] = torch.cat([take(f"{src}self_attn.{p}_proj.weight") for p in "qkv"])
            out[dst + "attn.in_proj_bias"] = torch.cat([take(f"{src}self_attn.{p}_proj.bias") for p in "qkv"])
    unexpected = sorted(set(sd) - used)
    if unexpected:
        raise CheckpointError(f"Hugging Face checkpoint has unexpected key {unexpected[0]!r}")
    return {k: v.float() for k, v in out.items()}


_ACTIVATIONS = {"quick_gelu": True, "gelu": False}
# HF's hidden_act per tower -> open_clip's act_kwargs (gelu_pytorch_tanh: GELU's tanh form; SigLIP's)
_GELU_FORMS: dict[str, dict | None] = {"gelu_pytorch_tanh": {"approximate": "tanh"}, "gelu": None}
_GELU_NAMES = {"tanh": "gelu_pytorch_tanh", "none": "gelu"}


def _mlp_ratio(tower: dict) -> float:
    """intermediate / hidden, nudged so that int(hidden * ratio) gives intermediate back
    (4304 / 1152 * 1152 is 4303.999... in floating point)."""
    hidden, inner = tower["hidden_size"], tower["intermediate_size"]
    ratio = inner / hidden
    return ratio if int(hidden * ratio) == inner else (inner + 0.5) / hidden


def config_from_hf(hf: dict) -> CLIPConfig:
    """``config.json`` of a CLIPModel or SiglipModel -> our config."""
    kind = hf.get("model_type")
    if kind == "siglip":
        return _siglip_config_from_hf(hf)
    if kind != "clip":
        raise CheckpointError(
            f"config.json has model_type {kind!r}; clipforge converts 'clip' (CLIPModel) and 'siglip' "
            "(SiglipModel, incl. SigLIP 2's fixed-resolution checkpoints); NaFlex 'siglip2' is not supported"
        )
    text, vision = hf["text_config"], hf["vision_config"]
    acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
    quick = "quick_gelu" in acts
    if (quick and len(acts) != 1) or not acts <= {*_ACTIVATIONS, "gelu_pytorch_tanh"}:
        raise CheckpointError(
            f"unsupported activation(s) {sorted(acts)} in config.json (key 'hidden_act'); clipforge supports "
            "'quick_gelu' (in both towers), 'gelu' and 'gelu_pytorch_tanh'"
        )
    return CLIPConfig(
        embed_dim=hf.get("projection_dim", 512),
        quick_gelu=quick,
        vision=VisionConfig(
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            width=vision["hidden_size"],
            layers=vision["num_hidden_layers"],
            head_width=vision["hidden_size"] // vision["num_attention_heads"],
            mlp_ratio=_mlp_ratio(vision),
            **_clip_tower_options(vision),
        ),
        text=TextConfig(
            context_length=text.get("max_position_embeddings", 77),
            vocab_size=text.get("vocab_size", 49408),
            width=text["hidden_size"],
            heads=text["num_attention_heads"],
            layers=text["num_hidden_layers"],
            mlp_ratio=_mlp_ratio(text),
            **_clip_tower_options(text),
        ),
    )


def _clip_tower_options(tower: dict) -> dict:
    """A CLIPModel tower's LayerNorm eps and GELU form as open_clip's keys (None: the defaults)."""
    eps = tower.get("layer_norm_eps", 1e-5)
    return {
        "norm_kwargs": None if eps == 1e-5 else {"eps": eps},
        "act_kwargs": _GELU_FORMS.get(tower.get("hidden_act", "quick_gelu")),
    }


def _siglip_act(tower: dict, name: str) -> dict | None:
    # HF's SigLIP default is gelu_pytorch_tanh (configuration_siglip.py).
    act = tower.get("hidden_act", "gelu_pytorch_tanh")
    if act not in _GELU_FORMS:
        raise CheckpointError(
            f"unsupported activation {act!r} in config.json ({name}_config key 'hidden_act'); "
            f"clipforge supports {', '.join(_GELU_FORMS)} for SigLIP"
        )
    return _GELU_FORMS[act]


def _siglip_config_from_hf(hf: dict) -> CLIPConfig:
    text, vision = hf["text_config"], hf["vision_config"]
    if not vision.get("vision_use_head", True):
        raise CheckpointError("config.json has vision_config key 'vision_use_head' false: a SigLIP without its pooling head")
    width = vision["hidden_size"]
    return CLIPConfig(
        embed_dim=width,  # the image features are the pooling head's output
        # SigLIP paper (arXiv:2303.15343), 3.1: t' = log 10, b = -10 (the checkpoint's values replace them)
        init_logit_scale=math.log(10),
        init_logit_bias=-10.0,
        vision=VisionConfig(
            image_size=vision["image_size"], patch_size=vision["patch_size"], width=width,
            layers=vision["num_hidden_layers"], head_width=width // vision["num_attention_heads"],
            mlp_ratio=_mlp_ratio(vision), class_token=False, patch_bias=True, no_ln_pre=True, pool_type="map",
            proj_type="none", act_kwargs=_siglip_act(vision, "vision"),
            norm_kwargs={"eps": vision.get("layer_norm_eps", 1e-6)},
        ),
        text=TextConfig(
            context_length=text.get("max_position_embeddings", 64), vocab_size=text.get("vocab_size", 32000),
            width=text["hidden_size"], heads=text["num_attention_heads"], layers=text["num_hidden_layers"],
            mlp_ratio=_mlp_ratio(text), no_causal_mask=True, pool_type="last", proj_bias=True,
            act_kwargs=_siglip_act(text, "text"), norm_kwargs={"eps": text.get("layer_norm_eps", 1e-6)},
        ),
    )  # fmt: skip


# What each HF class can express, in our keys: (tower, key, required value).
_CLIP_MODEL_FIXED = [
    ("vision", "class_token", True), ("vision", "patch_bias", False), ("vision", "no_ln_pre", False),
    ("vision", "pool_type", "tok"), ("vision", "attentional_pool", False), ("vision", "final_ln_after_pool", False),
    ("vision", "proj_type", "linear"), ("vision", "ls_init_value", None), ("text", "no_causal_mask", False),
    ("text", "pool_type", "argmax"), ("text", "proj_bias", False), ("text", "ls_init_value", None),
]  # fmt: skip
_SIGLIP_MODEL_FIXED = [
    ("vision", "class_token", False), ("vision", "patch_bias", True), ("vision", "no_ln_pre", True),
    ("vision", "pool_type", "map"), ("vision", "final_ln_after_pool", False), ("vision", "proj_type", "none"),
    ("vision", "ls_init_value", None), ("text", "no_causal_mask", True), ("text", "pool_type", "last"),
    ("text", "proj_bias", True), ("text", "ls_init_value", None),
]  # fmt: skip


def hf_model_type(config: CLIPConfig) -> str:
    """'clip' or 'siglip': the transformers class that expresses this model; otherwise an error
    naming the first key it cannot express."""
    v = config.vision
    if v.is_resnet:
        raise CheckpointError(
            "Hugging Face transformers has no ResNet CLIP; convert ResNet models to clipforge or open_clip"
        )
    if v.timm_model_name or config.text.hf_model_name:
        raise CheckpointError("a timm image tower or Hugging Face text tower has no transformers CLIPModel/SiglipModel form")
    kind, fixed = ("siglip", _SIGLIP_MODEL_FIXED) if v.pool_type == "map" else ("clip", _CLIP_MODEL_FIXED)
    for tower, key, value in fixed:
        actual = getattr(getattr(config, tower), key)
        if actual != value:
            cls = "SiglipModel" if kind == "siglip" else "CLIPModel"
            raise CheckpointError(f"transformers' {cls} cannot express {tower} key {key!r} = {actual!r} (it has {value!r})")
    if kind == "siglip" and config.quick_gelu:
        raise CheckpointError("transformers' SiglipModel uses GELU; this model has quick_gelu (key 'quick_gelu')")
    if kind == "siglip" and config.init_logit_bias is None:
        raise CheckpointError("transformers' SiglipModel has a logit bias; this model has none (key 'init_logit_bias')")
    return kind


def config_to_hf(config: CLIPConfig) -> dict:
    if hf_model_type(config) == "siglip":
        return _siglip_config_to_hf(config)
    v, t = config.vision, config.text

    def act(tower: VisionConfig | TextConfig) -> str:
        return "quick_gelu" if config.quick_gelu else _GELU_NAMES[tower.act_approximate]

    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.init_logit_scale,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio),
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": act(t),
            "layer_norm_eps": t.norm_eps,
            "projection_dim": config.embed_dim,
            # HF pools at the first end-of-text token when eos_token_id != 2; ours pools at the
            # argmax id, which is the first end-of-text token too.
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio),
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.num_heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_act": act(v),
            "layer_norm_eps": v.norm_eps,
            "projection_dim": config.embed_dim,
        },
    }


def _siglip_config_to_hf(config: CLIPConfig) -> dict:
    v, t = config.vision, config.text

    def encoder(tower: VisionConfig | TextConfig, heads: int) -> dict:
        return {"hidden_size": tower.width, "intermediate_size": int(tower.width * tower.mlp_ratio),
                "num_hidden_layers": tower.layers, "num_attention_heads": heads,
                "hidden_act": _GELU_NAMES[tower.act_approximate],
                "layer_norm_eps": tower.norm_eps}  # fmt: skip

    return {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "torch_dtype": "float32",
        "text_config": {"model_type": "siglip_text_model", **encoder(t, t.heads), "vocab_size": t.vocab_size,
                        "max_position_embeddings": t.context_length, "projection_size": config.embed_dim},
        "vision_config": {"model_type": "siglip_vision_model", **encoder(v, v.num_heads), "image_size": v.image_size,
                          "patch_size": v.patch_size, "num_channels": 3},
    }  # fmt: skip


def load_hf_dir(path: str | Path, quick_gelu: bool | None = None) -> CLIP:
    from .io import activation_message, load_state_dict_safetensors
    from .strict import load_strict

    path = Path(path)
    try:
        hf_config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}/config.json cannot be read as JSON ({e})") from None
    if hf_config.get("model_type") not in ("clip", "siglip"):
        raise CheckpointError(
            f"{path} holds a {hf_config.get('model_type')!r} model; CLIPModel ('clip') and SiglipModel ('siglip') convert"
        )
    config = config_from_hf(hf_config)
    config = config.replace(preprocess=preprocess_from_hf(path, hf_config["model_type"]))
    if quick_gelu is not None and quick_gelu != config.quick_gelu:
        raise CheckpointError(activation_message(path, config.quick_gelu, quick_gelu))
    if (path / "model.safetensors").exists():
        sd = load_state_dict_safetensors(path / "model.safetensors")
    elif (path / "pytorch_model.bin").exists():
        from .openai import read_torch_file

        sd = read_torch_file(path / "pytorch_model.bin")  # type: ignore[assignment]
    else:
        raise CheckpointError(f"{path} has no model.safetensors or pytorch_model.bin")
    model = CLIP(config)
    load_strict(model, from_hf_state_dict(sd), source=str(path))
    return model.eval()


# SiglipImageProcessor's defaults: straight to the square, bicubic, [-1, 1]
_SIGLIP_PREPROCESS = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash")
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as image processors store them


def preprocess_from_hf(path: Path, model_type: str) -> PreprocessConfig:
    """The image preprocessing a Hugging Face repository declares (preprocessor_config.json:
    image_mean/std, resample, size as shortest_edge -> resize + crop, or height/width ->
    squash); without that file, its model type's processor defaults."""
    default = _SIGLIP_PREPROCESS if model_type == "siglip" else PreprocessConfig()
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return default
    try:
        data = json.loads(file.read_text())
        size = data.get("size") or {}
        squash = isinstance(size, dict) and "height" in size and not data.get("do_center_crop", False)
        return PreprocessConfig(
            mean=tuple(data.get("image_mean", default.mean)), std=tuple(data.get("image_std", default.std)),
            interpolation=_RESAMPLE.get(data.get("resample", 3), "bicubic"),
            resize_mode="squash" if squash else "shortest",
        )  # fmt: skip
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{file} is not a usable image processor config ({e}); fix or delete it") from None


def save_hf_dir(model: CLIP, path: str | Path) -> Path:
    """A directory ``transformers.CLIPModel.from_pretrained`` and ``CLIPProcessor`` load:
    config, weights, image-processor config, and the tokenizer files made from our BPE."""
    from safetensors.torch import save_file

    path = Path(path)
    state = to_hf_state_dict(model)  # raises early for ResNets, before touching the disk
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        (tmp / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if hf_model_type(model.config) == "siglip":
            _write_siglip_processor_files(tmp, model.config)
        else:
            _write_processor_files(tmp, model.config)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_processor_files(directory: Path, config: CLIPConfig) -> None:
    from ..tokenizer import get_tokenizer, read_merges
    from ..transforms import OPENAI_MEAN, OPENAI_STD

    tok = get_tokenizer()
    (directory / "vocab.json").write_text(json.dumps(tok.encoder, ensure_ascii=False))
    merges = read_merges()
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": config.text.context_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }, indent=2))  # fmt: skip
    size = config.vision.image_size
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD), "do_convert_rgb": True,
    }, indent=2))  # fmt: skip


def _write_siglip_processor_files(directory: Path, config: CLIPConfig) -> None:
    """SiglipImageProcessor's config: resize to size x size (no crop), scale to [-1, 1] (mean and
    std 0.5, as google's SigLIP repositories). The SentencePiece tokenizer is not ours to write:
    copy the original repository's tokenizer files beside it (see models/hf_tokenizer.py)."""
    size = config.vision.image_size
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
        "do_resize": True, "size": {"height": size, "width": size}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }, indent=2))  # fmt: skip
