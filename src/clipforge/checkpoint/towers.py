"""The key table of the timm image tower and the Hugging Face text tower (open_clip's ``TimmModel``
and ``HFTextEncoder``). We keep open_clip's names, so the table is the identity on four prefixes;
below each prefix the names are timm's or transformers' own, checked by ``load_strict``.

  open_clip key                   clipforge key                   what it holds
  visual.trunk.<timm name>        visual.trunk.<timm name>        the timm network (ConvNeXt...)
  visual.head.proj.weight         visual.head.proj.weight         timm_proj='linear'
  visual.head.mlp.fc{1,2}.*       visual.head.mlp.fc{1,2}.*       timm_proj='mlp'
  text.transformer.<HF name>      text.transformer.<HF name>      the transformers encoder
  text.proj.weight                text.proj.weight                hf_proj_type='linear'
  text.proj.{0,2}.weight          text.proj.{0,2}.weight          hf_proj_type='mlp'

The rest of such a model (``logit_scale``, a ViT ``visual.*`` or OpenAI-named text tower) goes
through the OpenAI/open_clip table as before.
"""

from __future__ import annotations

import torch

__all__ = ["TOWER_PREFIXES", "TOWER_DROPPED_KEYS", "from_open_clip_towers", "to_open_clip_towers"]

# open_clip prefix -> ours (the identity, written down so a rename shows up here).
TOWER_PREFIXES: dict[str, str] = {
    "visual.trunk.": "visual.trunk.",
    "visual.head.": "visual.head.",
    "text.transformer.": "text.transformer.",
    "text.proj.": "text.proj.",
}

# Buffers (not weights) that checkpoints saved with transformers < 4.31 carry; newer versions no
# longer save them, and their values are the fixed 0..n-1 / zeros the model recreates.
TOWER_DROPPED_KEYS = ("text.transformer.embeddings.position_ids", "text.transformer.embeddings.token_type_ids")


def _rename(key: str, table: dict[str, str]) -> str:
    for prefix, target in table.items():
        if key.startswith(prefix):
            return target + key[len(prefix) :]
    return key


def from_open_clip_towers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip keys -> ours for the timm/HF towers; other keys pass through unchanged."""
    return {_rename(k, TOWER_PREFIXES): v for k, v in state_dict.items() if k not in TOWER_DROPPED_KEYS}


def to_open_clip_towers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> open_clip keys for the timm/HF towers; other keys pass through unchanged."""
    inverse = {ours: theirs for theirs, ours in TOWER_PREFIXES.items()}
    return {_rename(k, inverse): v for k, v in state_dict.items()}
