"""LiT on a ConvNeXt image tower: `train.lock_image` freezes the timm tower, the text tower learns."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from clipforge.checkpoint import save
from clipforge.factory import create_model
from clipforge.train import load_run_config, train


def test_lit_on_a_convnext_tower_keeps_it_and_lowers_the_loss(tmp_path: Path) -> None:
    start = create_model("tiny-convnext", seed=7)
    init = save(start, tmp_path / "init.safetensors")
    cfg = load_run_config(None, {"data.train": "synthetic:32", "train.batch_size": 16, "train.steps": 8,
                                 "train.warmup_steps": 1, "train.lr": 3e-3, "train.threads": 1,
                                 "train.lock_image": True, "train.init_from": str(init), "train.log_every": 1,
                                 "out_dir": str(tmp_path / "run")})  # fmt: skip
    result = train(cfg)
    before, after = start.state_dict(), load_file(result.final_weights)
    visual = [k for k in before if k.startswith("visual.")]
    assert any(k.startswith("visual.trunk.stages.") for k in visual)
    assert all(torch.equal(before[k], after[k]) for k in visual), [k for k in visual if not torch.equal(before[k], after[k])]
    text = [k for k in before if k.startswith(("transformer.", "token_embedding", "text_projection"))]
    assert all(not torch.equal(before[k], after[k]) for k in text)
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert len(losses) >= 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
