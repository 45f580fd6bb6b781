"""open_clip checkpoints <-> clipforge.

open_clip's ``CLIP`` uses OpenAI's names, so for it the table is nearly the identity: strip DDP's
``module.`` prefix, unwrap ``{"state_dict": ...}`` training checkpoints, drop the non-persistent
``attn_mask`` buffer some versions saved. Two layouts need real tables:

- SigLIP's image tower is a timm ViT under ``visual.trunk.`` (``timm_model_name``); clipforge
  builds the same network as its own ViT, so ``TIMM_VIT_KEYS`` / ``TIMM_BLOCK_KEYS`` map timm's
  names to ours (timm's ``attn_pool.q`` and ``attn_pool.kv`` fuse into one ``in_proj``).
- ``CustomTextCLIP`` (``custom_text: true``, every SigLIP) keeps the text tower under ``text.``
  with ``text_projection`` an ``nn.Linear`` when ``proj_bias``; ours keeps OpenAI's top-level names
  and matrix (``TEXT_KEYS``).

The timm towers of other families (ConvNeXt) and Hugging Face text towers keep open_clip's names
(``checkpoint/towers.py``); these tables leave them alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch

from ..config import SIGLIP_TIMM_VITS, SIGLIP_VIT_FIELDS, CLIPConfig, VisionConfig
from ..errors import CheckpointError, ConfigError
from ..models.clip import CLIP
from .io import atomic_path

__all__ = ["from_open_clip", "to_open_clip", "to_open_clip_state_dict", "unwrap_training_checkpoint",
           "open_clip_model_config", "read_sidecar_config", "is_siglip_vit", "siglip_timm_name",
           "TIMM_VIT_KEYS", "TIMM_BLOCK_KEYS", "TEXT_KEYS", "needs_sidecar_config"]  # fmt: skip

Transform = Callable[[torch.Tensor], torch.Tensor]
_same: Transform = lambda t: t  # noqa: E731
_t: Transform = lambda t: t.t().contiguous()  # noqa: E731  OpenAI's x @ W  vs  nn.Linear's x W^T
_squeeze0: Transform = lambda t: t.reshape(t.shape[-2], t.shape[-1])  # noqa: E731  (1, n, w) -> (n, w)
_unsqueeze0: Transform = lambda t: t.unsqueeze(0)  # noqa: E731  (n, w) -> (1, n, w)

_DROPPED = ("attn_mask", "text.attn_mask")
_TRUNK, _OURS_VISUAL = "visual.trunk.", "visual."
_SIGLIP_MARKER = "visual.trunk.attn_pool.latent"  # only timm's MAP-head ViTs, which we build natively
_CUSTOM_TEXT_MARKER = "text.token_embedding.weight"  # a native text tower under text. (not an HF one)

# timm SigLIP ViT, below "visual.trunk." -> ours below "visual.": (our key, timm->ours, ours->timm)
TIMM_VIT_KEYS: dict[str, tuple[str, Transform, Transform]] = {
    "patch_embed.proj.weight": ("conv1.weight", _same, _same),
    "patch_embed.proj.bias": ("conv1.bias", _same, _same),
    "pos_embed": ("positional_embedding", _squeeze0, _unsqueeze0),  # (1, tokens, width)
    "norm.weight": ("ln_post.weight", _same, _same),  # applied to every token, before the head
    "norm.bias": ("ln_post.bias", _same, _same),
    "attn_pool.latent": ("attn_pool.query", _squeeze0, _unsqueeze0),  # (1, 1, width)
    "attn_pool.proj.weight": ("attn_pool.attn.out_proj.weight", _same, _same),
    "attn_pool.proj.bias": ("attn_pool.attn.out_proj.bias", _same, _same),
    "attn_pool.norm.weight": ("attn_pool.ln_2.weight", _same, _same),
    "attn_pool.norm.bias": ("attn_pool.ln_2.bias", _same, _same),
    "attn_pool.mlp.fc1.weight": ("attn_pool.mlp.c_fc.weight", _same, _same),
    "attn_pool.mlp.fc1.bias": ("attn_pool.mlp.c_fc.bias", _same, _same),
    "attn_pool.mlp.fc2.weight": ("attn_pool.mlp.c_proj.weight", _same, _same),
    "attn_pool.mlp.fc2.bias": ("attn_pool.mlp.c_proj.bias", _same, _same),
}
# timm's head projects the latent query (q) and the tokens (kv) separately; ours is one
# nn.MultiheadAttention-layout in_proj, rows [q; k; v] (timm's kv rows are [k; v]).
_TIMM_POOL_QKV = {"weight": ("attn_pool.q.weight", "attn_pool.kv.weight"), "bias": ("attn_pool.q.bias", "attn_pool.kv.bias")}
# Per block: timm "blocks.{i}." -> ours "transformer.resblocks.{i}.". timm's qkv rows are
# [q; k; v], each heads x head_dim, as OpenAI's in_proj.
TIMM_BLOCK_KEYS: dict[str, str] = {
    "norm1.weight": "ln_1.weight",
    "norm1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.in_proj_weight",
    "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj.weight": "attn.out_proj.weight",
    "attn.proj.bias": "attn.out_proj.bias",
    "norm2.weight": "ln_2.weight",
    "norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
# CustomTextCLIP's projection (below "text."): an nn.Linear with proj_bias, else OpenAI's matrix.
TEXT_KEYS: dict[str, tuple[str, Transform, Transform]] = {
    "text_projection.weight": ("text_projection", _t, _t),
    "text_projection.bias": ("text_projection_bias", _same, _same),
}


def unwrap_training_checkpoint(obj: object) -> dict[str, torch.Tensor]:
    """open_clip's ``epoch_N.pt`` holds ``{"epoch", "name", "state_dict", "optimizer"}``."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a state dict (a dict of tensors), found {type(obj).__name__}")
    return obj  # type: ignore[return-value]


def from_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip state dict -> ours (fp32). A timm SigLIP trunk key without a row in the tables is
    an error naming it."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if k not in _DROPPED}
    out: dict[str, torch.Tensor] = {}
    if _SIGLIP_MARKER in sd:
        sd = _from_timm_vit(sd, out)
    if _CUSTOM_TEXT_MARKER in sd:
        sd = _from_text_keys(sd, "text.")
    elif "text_projection.weight" in sd:  # open_clip's CLIP with proj_bias: a top-level nn.Linear
        sd = _from_text_keys(sd, "")
    out.update(sd)
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def _from_timm_vit(sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Moves every ``visual.trunk.*`` key of ``sd`` into ``out`` under our names; returns the rest."""
    trunk = {k[len(_TRUNK) :]: v for k, v in sd.items() if k.startswith(_TRUNK)}
    for part, (q, kv) in _TIMM_POOL_QKV.items():
        if q not in trunk or kv not in trunk:
            raise CheckpointError(f"open_clip SigLIP checkpoint is missing key {_TRUNK + (q if q not in trunk else kv)!r}")
        out[f"{_OURS_VISUAL}attn_pool.attn.in_proj_{part}"] = torch.cat([trunk.pop(q), trunk.pop(kv)])
    for key, value in trunk.items():
        out[_OURS_VISUAL + _timm_to_ours(key)] = TIMM_VIT_KEYS[key][1](value) if key in TIMM_VIT_KEYS else value
    return {k: v for k, v in sd.items() if not k.startswith(_TRUNK)}


def _timm_to_ours(key: str) -> str:
    if key in TIMM_VIT_KEYS:
        return TIMM_VIT_KEYS[key][0]
    block = _TIMM_BLOCK.fullmatch(key)
    if block and block.group(2) in TIMM_BLOCK_KEYS:
        return f"transformer.resblocks.{block.group(1)}.{TIMM_BLOCK_KEYS[block.group(2)]}"
    raise CheckpointError(
        f"open_clip SigLIP checkpoint key {_TRUNK + key!r} has no counterpart in clipforge's SigLIP ViT "
        "(checkpoint/open_clip.py, TIMM_VIT_KEYS / TIMM_BLOCK_KEYS)"
    )


def _from_text_keys(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The text tower below ``prefix`` ("text." for CustomTextCLIP) -> our top-level names, its
    nn.Linear projection -> OpenAI's matrix + bias; other keys unchanged."""
    out = {}
    for key, value in sd.items():
        rest = key[len(prefix) :] if key.startswith(prefix) else None
        if rest is None or (not prefix and rest not in TEXT_KEYS):
            out[key] = value
        elif rest in TEXT_KEYS:
            ours, fwd, _ = TEXT_KEYS[rest]
            out[ours] = fwd(value)
        else:
            out[rest] = value  # token_embedding, positional_embedding, transformer, ln_final, text_projection
    return out


def needs_sidecar_config(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """A SigLIP state dict does not say its heads, activations or text pooling: without a model
    config beside it, say which file to put where."""
    if "visual.attn_pool.query" in state_dict or _SIGLIP_MARKER in state_dict:
        stem = Path(path).with_suffix(".json")
        raise CheckpointError(
            f"{path} is a SigLIP checkpoint without its model config: place open_clip's model config "
            f"(e.g. open_clip/model_configs/ViT-B-16-SigLIP.json) at {stem}, or load the repository "
            "with hf-hub:/local-dir: (open_clip_config.json)"
        )


# --- clipforge -> open_clip --------------------------------------------------------------------
def is_siglip_vit(vision: VisionConfig) -> bool:
    """An image tower open_clip can only build as timm's SigLIP ViT."""
    return not vision.is_resnet and not vision.timm_model_name and vision.pool_type == "map"


def siglip_timm_name(vision: VisionConfig) -> str | None:
    """The timm model (``SIGLIP_TIMM_VITS``) that builds exactly this image tower, if any."""
    arch = (vision.image_size, vision.patch_size, vision.width, vision.layers, vision.num_heads,
            vision.mlp_ratio, vision.act_approximate == "tanh")  # fmt: skip
    return next((name for name, row in SIGLIP_TIMM_VITS.items() if row == arch), None)


def _timm_vision_cfg(vision: VisionConfig, timm_model_name: str | None) -> dict:
    """open_clip's vision_cfg for a SigLIP ViT: timm's model name, with our architecture beside it
    (open_clip ignores those keys for a timm tower; clipforge reads them back)."""
    for key, value in SIGLIP_VIT_FIELDS.items():
        if getattr(vision, key) != value:
            raise CheckpointError(
                f"vision key {key!r} = {getattr(vision, key)!r}: timm's SigLIP ViT (open_clip's only "
                f"build of pool_type 'map') has {value!r}; this model cannot be written for open_clip"
            )
    if vision.ls_init_value is not None or vision.final_ln_after_pool:
        raise CheckpointError("vision keys 'ls_init_value'/'final_ln_after_pool' have no timm SigLIP ViT counterpart")
    name = timm_model_name or siglip_timm_name(vision)
    if name is None:
        raise CheckpointError(
            f"no timm model in SIGLIP_TIMM_VITS builds this SigLIP image tower (image_size {vision.image_size}, "
            f"patch {vision.patch_size}, width {vision.width}, {vision.layers} layers, {vision.num_heads} heads); "
            "open_clip builds it through timm: pass timm_model_name= for a model registered with timm"
        )
    cfg = {"timm_model_name": name, "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none",
           "image_size": vision.image_size, "patch_size": vision.patch_size, "width": vision.width,
           "layers": vision.layers, "head_width": vision.head_width, "mlp_ratio": vision.mlp_ratio}  # fmt: skip
    if vision.act_kwargs:
        cfg["act_kwargs"] = dict(vision.act_kwargs)
    return cfg


def open_clip_model_config(model: CLIP, timm_model_name: str | None = None) -> dict:
    """The JSON open_clip's ``add_model_config``/``create_model`` accept for this model. A SigLIP
    image tower becomes timm's model (``timm_model_name`` for one missing from SIGLIP_TIMM_VITS),
    with ``custom_text`` as open_clip's SigLIP configs."""
    cfg = model.config.to_dict()
    cfg.pop("preprocess_cfg", None)  # open_clip keeps it beside the model config (open_clip_config.json), not in it
    if is_siglip_vit(model.config.vision):
        cfg["vision_cfg"] = _timm_vision_cfg(model.config.vision, timm_model_name)
        cfg["custom_text"] = True
    return cfg


def to_open_clip_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """Ours -> open_clip's names (CustomTextCLIP + timm trunk for a SigLIP image tower)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if not is_siglip_vit(model.config.vision):
        if "text_projection_bias" not in state:
            return state
        text = {k[len("text.") :]: v for k, v in _to_custom_text(state).items()}  # CLIP keeps them top-level
        return {**{k: v for k, v in state.items() if not _is_text_key(k)}, **text}
    out = {k: v for k, v in state.items() if not k.startswith(_OURS_VISUAL) and not _is_text_key(k)}
    out.update(_to_timm_vit(state))
    out.update(_to_custom_text(state))
    return out


def _is_text_key(key: str) -> bool:
    text_modules = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
    return key.startswith(text_modules)


def _to_timm_vit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ours_to_timm = {ours: (timm, back) for timm, (ours, _, back) in TIMM_VIT_KEYS.items()}
    block_back = {ours: timm for timm, ours in TIMM_BLOCK_KEYS.items()}
    out = {}
    for key, value in state.items():
        if not key.startswith(_OURS_VISUAL):
            continue
        rest = key[len(_OURS_VISUAL) :]
        if rest.startswith("attn_pool.attn.in_proj_"):
            part = rest.rsplit("_", 1)[1]  # weight | bias
            q, kv = _TIMM_POOL_QKV[part]
            width = value.shape[0] // 3
            out[_TRUNK + q], out[_TRUNK + kv] = value[:width].clone(), value[width:].clone()
        elif rest in ours_to_timm:
            timm, back = ours_to_timm[rest]
            out[_TRUNK + timm] = back(value)
        else:
            match = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", rest)
            if not match or match.group(2) not in block_back:
                raise CheckpointError(f"clipforge key {key!r} has no counterpart in timm's SigLIP ViT")
            out[f"{_TRUNK}blocks.{match.group(1)}.{block_back[match.group(2)]}"] = value
    return out


def _to_custom_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    back = {ours: (theirs, rev) for theirs, (ours, _, rev) in TEXT_KEYS.items()}
    bias = "text_projection_bias" in state
    out = {}
    for key, value in state.items():
        if not _is_text_key(key):
            continue
        if key in back and (bias or key != "text_projection"):  # an nn.Linear only with proj_bias
            theirs, rev = back[key]
            out["text." + theirs] = rev(value)
        else:
            out["text." + key] = value
    return out


def read_sidecar_config(path: str | Path) -> CLIPConfig | None:
    """The ``<stem>.json`` open_clip model config beside a ``.pt``, if there is one."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        return CLIPConfig.from_json(sidecar.read_text())
    except ConfigError as e:
        raise CheckpointError(f"{sidecar} is not a usable model config: {e}") from None


def to_open_clip(model: CLIP, path: str | Path, timm_model_name: str | None = None) -> Path:
    """Write a plain state dict ``.pt`` and a sidecar ``<stem>.json`` model config, so
    ``open_clip.add_model_config(json); open_clip.create_model(stem, pretrained=pt)`` works."""
    path = Path(path)
    config = open_clip_model_config(model, timm_model_name)  # raises before touching the disk
    state = {k: v.cpu().contiguous() for k, v in to_open_clip_state_dict(model).items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    return path
