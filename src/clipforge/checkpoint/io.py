"""clipforge's own checkpoint format: safetensors whose metadata carries the model config.

``load_clipforge(path)`` needs nothing but the file. Writes are atomic (temp file + rename), so
an interrupted save never destroys the previous file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import CLIPConfig
from ..errors import CheckpointError
from ..models.clip import CLIP

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save", "load_clipforge", "read_metadata", "atomic_path", "activation_message"]

FORMAT_NAME = "clipforge"
FORMAT_VERSION = "1"


class atomic_path:
    """Context manager giving a temporary path beside ``path``; renamed over it on success."""

    def __init__(self, path: str | Path, suffix: str = ".tmp") -> None:
        self.path = Path(path)
        self.suffix = suffix

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=self.suffix)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def save(model: CLIP, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as self-describing safetensors (config + format version in metadata)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "clipforge_version": __version__,
        "config": model.config.to_json(),
        **(metadata or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_state_dict_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_clipforge(path: str | Path, quick_gelu: bool | None = None) -> CLIP:
    """A clipforge safetensors file -> model (eval mode)."""
    from .strict import load_strict

    meta = read_metadata(path)
    if meta.get("format") != FORMAT_NAME or "config" not in meta:
        raise CheckpointError(f"{path} has no clipforge config in its metadata; is it a clipforge file?")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has clipforge format version {meta.get('format_version')}, this clipforge "
            f"reads version {FORMAT_VERSION}; upgrade clipforge"
        )
    config = CLIPConfig.from_json(meta["config"])
    if quick_gelu is not None and quick_gelu != config.quick_gelu:
        raise CheckpointError(activation_message(path, config.quick_gelu, quick_gelu))
    model = CLIP(config)
    load_strict(model, load_state_dict_safetensors(path), source=str(path))
    return model.eval()


def activation_message(path: Any, stored: bool, requested: bool) -> str:
    """The error every loader raises when ``quick_gelu`` contradicts what the weights were trained with."""
    name = {True: "QuickGELU", False: "GELU"}
    return (
        f"activation mismatch for {path}: the weights were trained with {name[stored]} but "
        f"{name[requested]} was requested (key 'quick_gelu'); drop the quick_gelu argument"
    )


def config_metadata(config: CLIPConfig) -> dict[str, Any]:
    return json.loads(config.to_json())
