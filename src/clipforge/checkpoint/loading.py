"""One entry point for every format: detect it, map its keys with its table, build the model."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from ..config import CLIPConfig
from ..errors import CheckpointError
from ..factory import create_model, create_preprocess
from ..models.clip import CLIP
from ..registry import MODEL_CONFIGS
from ..transforms import Preprocess
from . import hf, hub, io, open_clip, openai, towers
from . import pretrained as published

__all__ = ["Format", "detect_format", "load", "load_model", "convert"]

Format = Literal["clipforge", "hf", "openai_jit", "torch_state_dict", "safetensors_state_dict"]


def detect_format(path: str | Path) -> Format:
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        raise CheckpointError(f"{path} is a directory without config.json; expected a Hugging Face CLIPModel directory")
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(f"{path} is empty or truncated ({path.stat().st_size} bytes)")
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, path):
        meta = io.read_metadata(path)
        return "clipforge" if meta.get("format") == io.FORMAT_NAME else "safetensors_state_dict"
    if openai.is_torchscript(path):
        return "openai_jit"
    return "torch_state_dict"


def _looks_like_safetensors(head: bytes, path: Path) -> bool:
    # safetensors starts with a little-endian u64 header length followed by '{'.
    size = int.from_bytes(head, "little")
    if not 0 < size < path.stat().st_size:
        return False
    with open(path, "rb") as f:
        f.seek(8)
        return f.read(1) == b"{"


def load_model(
    name_or_path: str | Path,
    *,
    pretrained: str | None = None,
    quick_gelu: bool | None = None,
    download: bool = True,
) -> CLIP:
    """Any supported source -> CLIP in eval mode on the CPU."""
    name = str(name_or_path)
    if hub.is_repository(name):  # hf-hub:ORG/NAME, local-dir:PATH
        return hub.load_repository(name, quick_gelu, download)
    if pretrained not in (None, "openai"):  # open_clip's tags, e.g. laion2b_s34b_b79k
        return hub.load_pretrained_tag(name, pretrained, quick_gelu, download)
    weights = published.resolve_pretrained(name, pretrained) if not Path(name).exists() else None
    if weights is not None:
        path = published.fetch(weights, download=download)
        return _load_file(path, quick_gelu, openai_default=True)
    if name in MODEL_CONFIGS and not Path(name).exists():
        return create_model(name)  # a registry name alone: random init (OpenAI's scheme)
    if not Path(name).exists():
        raise CheckpointError(
            f"{name!r} is neither a file, a directory, a model name (see `clipforge list-models`) "
            f"nor a published name ({', '.join(published.OPENAI_NAMES)})"
        )
    return _load_file(Path(name), quick_gelu, openai_default=True)


def _load_file(path: Path, quick_gelu: bool | None, openai_default: bool) -> CLIP:
    fmt = detect_format(path)
    if fmt == "clipforge":
        return io.load_clipforge(path, quick_gelu)
    if fmt == "hf":
        return hf.load_hf_dir(path, quick_gelu)
    if fmt == "openai_jit":
        if quick_gelu is False:
            raise CheckpointError(
                f"activation mismatch for {path}: OpenAI's archives were trained with QuickGELU "
                "(key 'quick_gelu'); drop quick_gelu=False"
            )
        return _from_openai_keys(openai.from_openai(openai.read_torch_file(path)), True, path)  # type: ignore[arg-type]
    if fmt == "safetensors_state_dict":
        state = io.load_state_dict_safetensors(path)
    else:
        state = open_clip.unwrap_training_checkpoint(openai.read_torch_file(path))
    state = openai.from_openai(towers.from_open_clip_towers(open_clip.from_open_clip(state)))
    sidecar = open_clip.read_sidecar_config(path)
    if sidecar is not None:  # written by `clipforge convert --to open_clip`: heads, activation
        if quick_gelu is not None and quick_gelu != sidecar.quick_gelu:
            raise CheckpointError(io.activation_message(path, sidecar.quick_gelu, quick_gelu))
        return _from_openai_keys(state, sidecar.quick_gelu, path, sidecar)
    open_clip.needs_sidecar_config(state, path)  # SigLIP: shapes do not say heads, activations, pooling
    # A plain state dict does not say which activation it was trained with; OpenAI's is QuickGELU.
    return _from_openai_keys(state, openai_default if quick_gelu is None else quick_gelu, path)


def _from_openai_keys(
    state: dict[str, torch.Tensor], quick_gelu: bool, path: Path, config: CLIPConfig | None = None
) -> CLIP:
    from .strict import load_strict

    config = config or openai.infer_config(state, quick_gelu=quick_gelu)
    if "logit_bias" in state and config.init_logit_bias is None:  # keep a sidecar's init value
        config = config.replace(init_logit_bias=0.0)
    model = CLIP(config)
    load_strict(model, state, source=str(path))
    return model.eval()


def load(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    pretrained: str | None = None,
    quick_gelu: bool | None = None,
    download: bool = True,
) -> tuple[CLIP, Preprocess]:
    """Load a CLIP and its preprocessing from any supported source.

    - a registry name (``"ViT-B-32"``): random initialisation; add ``pretrained="openai"`` for
      the published weights;
    - an OpenAI name (``"ViT-B/32"``, ``"RN50"``, ``"ViT-L/14@336px"``): the published weights,
      from the cache (``clipforge.checkpoint.pretrained.cache_dir()``) or downloaded;
    - a clipforge ``.safetensors`` file (config inside);
    - an OpenAI TorchScript archive or state dict (``.pt``), an open_clip checkpoint (plain
      state dict, ``{"state_dict": ...}`` training checkpoint, or ``.safetensors``);
    - a Hugging Face ``CLIPModel`` directory;
    - ``pretrained=TAG`` for open_clip's published tags (``("ViT-B-32", "laion2b_s34b_b79k")``,
      see ``checkpoint.pretrained.list_pretrained()``), fetched through the Hugging Face cache;
    - ``"hf-hub:ORG/NAME"`` or ``"local-dir:PATH"``: an open_clip-format repository
      (``open_clip_config.json`` + weights) or a Hugging Face-format one (``config.json`` + weights).

    Plain state dicts do not record the activation: they load with QuickGELU (OpenAI's) unless
    ``quick_gelu=False``. Pickles load with ``weights_only=True``; one that would run code is refused.
    """
    model = load_model(name_or_path, pretrained=pretrained, quick_gelu=quick_gelu, download=download)
    return model.to(device), create_preprocess(model)


def convert(
    src: str | Path,
    dst: str | Path,
    to: Literal["clipforge", "open_clip", "hf"] = "clipforge",
    *,
    quick_gelu: bool | None = None,
) -> Path:
    """Read ``src`` in any supported format and write ``dst`` in format ``to``."""
    model = load_model(src, quick_gelu=quick_gelu)
    writers = {"clipforge": io.save, "open_clip": open_clip.to_open_clip, "hf": hf.save_hf_dir}
    if to not in writers:
        raise CheckpointError(f"unknown target format {to!r}; choose one of {', '.join(writers)}")
    return writers[to](model, dst)
