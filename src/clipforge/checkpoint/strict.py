"""Strict state-dict loading: every mismatch is an error that names the key."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["load_strict"]


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model``; missing, unexpected or mis-shaped keys raise."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"{source}: missing key {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; the checkpoint does not match this architecture"
        )
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected key {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
            + "; the checkpoint is of a different architecture"
        )
    for key, value in state_dict.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: shape mismatch for key {key!r}: checkpoint has {tuple(value.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    # Checkpoints may be fp16 (OpenAI's); the model keeps its own dtype.
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)
