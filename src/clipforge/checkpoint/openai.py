"""OpenAI's checkpoints: TorchScript archives (``clip.load``'s ``.pt``) and plain state dicts.

Our parameter names are OpenAI's, so the key table is the identity minus three metadata
entries the archives carry. The architecture is inferred from tensor shapes exactly as
``clip/model.py::build_model`` does.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..config import CLIPConfig, TextConfig, VisionConfig
from ..errors import CheckpointError

__all__ = ["OPENAI_DROPPED_KEYS", "infer_config", "from_openai", "read_torch_file", "is_torchscript"]

# Scalars stored beside the weights in OpenAI's archives; they are not parameters.
OPENAI_DROPPED_KEYS = ("input_resolution", "context_length", "vocab_size")


def from_openai(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI state dict -> ours (identity table, fp32)."""
    return {k: v.float() for k, v in state_dict.items() if k not in OPENAI_DROPPED_KEYS}


def infer_config(state_dict: dict[str, torch.Tensor], quick_gelu: bool) -> CLIPConfig:
    """Architecture from shapes, as OpenAI's build_model (heads = width // 64)."""
    try:
        vision = _infer_vision(state_dict)
        text_width = state_dict["ln_final.weight"].shape[0]
        text_layers = len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")})
        text = TextConfig(
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
            width=text_width,
            heads=max(1, text_width // 64),
            layers=text_layers,
            mlp_ratio=state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        )
        return CLIPConfig(
            embed_dim=state_dict["text_projection"].shape[1], vision=vision, text=text, quick_gelu=quick_gelu
        )
    except KeyError as e:
        raise CheckpointError(
            f"missing key {e.args[0]!r}: this is not a CLIP state dict with OpenAI's parameter names"
        ) from None


def _infer_vision(sd: dict[str, torch.Tensor]) -> VisionConfig:
    if "visual.proj" in sd:  # ViT
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
        return VisionConfig(image_size=patch * grid, layers=layers, width=width, patch_size=patch, mlp_ratio=mlp)
    counts = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)]
    grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    width = sd["visual.layer1.0.conv1.weight"].shape[0]
    return VisionConfig(image_size=grid * 32, layers=tuple(counts), width=width, patch_size=None)


def is_torchscript(path: str | Path) -> bool:
    """TorchScript archives are zips holding serialized code next to the tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in names)


def read_torch_file(path: str | Path) -> object:
    """``torch.load`` restricted to tensors and plain containers: a pickle that would run code
    is refused before anything in it executes."""
    if is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu").state_dict()
        except RuntimeError as e:
            raise CheckpointError(f"{path} is a TorchScript archive that cannot be read ({e})") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=_mmap_ok(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors, which could run "
            f"code when unpickled ({str(e).splitlines()[0]}). Only load files you trust; convert "
            f"trusted ones to safetensors with `clipforge convert`."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({e})") from None


def _mmap_ok(path: str | Path) -> bool:
    # mmap needs the zip-based format (torch >= 1.6); legacy files are read into memory.
    return zipfile.is_zipfile(path)
