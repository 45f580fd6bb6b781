"""open_clip checkpoints. Its CLIP class uses OpenAI's names, so the table is nearly the
identity: strip DDP's ``module.`` prefix, unwrap ``{"state_dict": ...}`` training
checkpoints, drop the non-persistent ``attn_mask`` buffer some versions saved."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import CLIPConfig
from ..errors import CheckpointError, ConfigError
from ..models.clip import CLIP
from .io import atomic_path

__all__ = ["from_open_clip", "to_open_clip", "unwrap_training_checkpoint", "open_clip_model_config"]

_DROPPED = ("attn_mask",)


def unwrap_training_checkpoint(obj: object) -> dict[str, torch.Tensor]:
    """open_clip's ``epoch_N.pt`` holds ``{"epoch", "name", "state_dict", "optimizer"}``."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a state dict (a dict of tensors), found {type(obj).__name__}")
    return obj  # type: ignore[return-value]


def from_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key in _DROPPED:
            continue
        out[key] = value.float() if value.is_floating_point() else value
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


def open_clip_model_config(model: CLIP) -> dict:
    """The JSON open_clip's ``add_model_config``/``create_model`` accept for this model."""
    return model.config.to_dict()


def to_open_clip(model: CLIP, path: str | Path) -> Path:
    """Write a plain state dict ``.pt`` and a sidecar ``<stem>.json`` model config, so
    ``open_clip.add_model_config(json); open_clip.create_model(stem, pretrained=pt)`` works."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(open_clip_model_config(model), indent=2))
    return path
