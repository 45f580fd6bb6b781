"""Hugging Face ``transformers.CLIPModel`` <-> clipforge, one explicit key table.

HF splits OpenAI's fused ``in_proj`` into q/k/v, stores projections as ``nn.Linear`` weights
(the transpose of OpenAI's matrices) and keeps position embeddings in ``nn.Embedding``.
HF has no ResNet CLIP, so only ViT models convert. Reading an HF directory needs only its
``config.json`` and weights; transformers itself is not imported.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..config import CLIPConfig, TextConfig, VisionConfig
from ..errors import CheckpointError
from ..models.clip import CLIP

__all__ = ["TOP_LEVEL_KEYS", "LAYER_KEYS", "to_hf_state_dict", "from_hf_state_dict", "config_from_hf",
           "config_to_hf", "load_hf_dir", "save_hf_dir"]  # fmt: skip

Transform = Callable[[torch.Tensor], torch.Tensor]
_same: Transform = lambda t: t  # noqa: E731
_t: Transform = lambda t: t.t().contiguous()  # noqa: E731  OpenAI's x @ W  vs  HF's Linear (x W^T)

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
    if model.config.vision.is_resnet:
        raise CheckpointError(
            "Hugging Face transformers has no ResNet CLIP; convert ResNet models to clipforge or open_clip"
        )
    ours = model.state_dict()
    out = {hf: fwd(ours[key]) for key, (hf, fwd, _) in TOP_LEVEL_KEYS.items()}
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

    for key, (hf, _, back) in TOP_LEVEL_KEYS.items():
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


def config_from_hf(hf: dict) -> CLIPConfig:
    text, vision = hf["text_config"], hf["vision_config"]
    acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or next(iter(acts)) not in _ACTIVATIONS:
        raise CheckpointError(
            f"unsupported activation(s) {sorted(acts)} in config.json (key 'hidden_act'); "
            "clipforge supports 'quick_gelu' and 'gelu', the same in both towers"
        )
    return CLIPConfig(
        embed_dim=hf.get("projection_dim", 512),
        quick_gelu=_ACTIVATIONS[acts.pop()],
        vision=VisionConfig(
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            width=vision["hidden_size"],
            layers=vision["num_hidden_layers"],
            head_width=vision["hidden_size"] // vision["num_attention_heads"],
            mlp_ratio=vision["intermediate_size"] / vision["hidden_size"],
        ),
        text=TextConfig(
            context_length=text.get("max_position_embeddings", 77),
            vocab_size=text.get("vocab_size", 49408),
            width=text["hidden_size"],
            heads=text["num_attention_heads"],
            layers=text["num_hidden_layers"],
            mlp_ratio=text["intermediate_size"] / text["hidden_size"],
        ),
    )


def config_to_hf(config: CLIPConfig) -> dict:
    act = "quick_gelu" if config.quick_gelu else "gelu"
    v, t = config.vision, config.text
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
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
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
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "projection_dim": config.embed_dim,
        },
    }


def load_hf_dir(path: str | Path, quick_gelu: bool | None = None) -> CLIP:
    from .io import activation_message, load_state_dict_safetensors
    from .strict import load_strict

    path = Path(path)
    try:
        hf_config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}/config.json cannot be read as JSON ({e})") from None
    if hf_config.get("model_type") != "clip":
        raise CheckpointError(
            f"{path} holds a {hf_config.get('model_type')!r} model; only CLIPModel ('clip') converts"
        )
    config = config_from_hf(hf_config)
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
