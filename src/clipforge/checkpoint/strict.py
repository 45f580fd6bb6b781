"""Strict state-dict loading: every mismatch is an error that names the key."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["load_strict"]


def _no_extra_keys(keys: list[str], kind: str, hint: str, source: str) -> None:
    if keys:
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        raise CheckpointError(f"{source}: {kind} key {keys[0]!r}{more}; {hint}")


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model``; missing, unexpected or mis-shaped keys raise."""
    expected = model.state_dict()
    _no_extra_keys([k for k in expected if k not in state_dict], "missing", "the checkpoint does not match this architecture", source)
    _no_extra_keys([k for k in state_dict if k not in expected], "unexpected", "the checkpoint is of a different architecture", source)
    for key, value in state_dict.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: shape mismatch for key {key!r}: checkpoint has {tuple(value.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    # Checkpoints may be fp16 (OpenAI's); the model keeps its own dtype.
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)
