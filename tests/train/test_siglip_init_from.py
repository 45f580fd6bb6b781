"""Fine-tuning from an open_clip SigLIP checkpoint (timm image tower, CustomTextCLIP) with the
sigmoid loss: ``train.init_from`` reads the file through the conversion tables, ``train.loss``
picks SigLipLoss, which trains the checkpoint's logit bias."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file

from clipforge.checkpoint import load
from clipforge.checkpoint.open_clip import to_open_clip
from clipforge.config import CLIPConfig, apply_overrides
from clipforge.factory import create_model
from clipforge.train import load_run_config, train


def test_finetune_open_clip_siglip_checkpoint_with_sigmoid_loss(tmp_path: Path) -> None:
    config = CLIPConfig.from_json(resources.files("clipforge.model_configs").joinpath("tiny-siglip.json").read_text())
    # train/loop.py tokenizes with CLIP's BPE whatever the model: ids up to 49407 need the vocabulary.
    config = apply_overrides(config, {"text.vocab_size": 49408})
    start = create_model(config, seed=0)
    with torch.no_grad():
        start.logit_bias.fill_(-9.0)
    # open_clip's files: plain state dict with timm/CustomTextCLIP names + model config beside it
    pt = to_open_clip(start, tmp_path / "siglip.pt", timm_model_name="vit_tiny_test_patch8_siglip_32")
    assert "visual.trunk.attn_pool.latent" in torch.load(pt, weights_only=True)
    cfg = load_run_config(None, {"data.train": "synthetic:32", "train.batch_size": 8, "train.steps": 3,
                                 "train.warmup_steps": 1, "train.lr": 0.01, "train.threads": 1,
                                 "train.loss": "siglip", "train.init_from": str(pt),
                                 "out_dir": str(tmp_path / "run")})  # fmt: skip
    result = train(cfg)
    losses = [row["loss"] for row in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    after = load_file(result.final_weights)
    # Only the sigmoid loss reads the logit bias (InfoNCE gives it no gradient): it moved.
    assert after["logit_bias"].item() != -9.0
    before = {k: v for k, v in start.state_dict().items()}
    assert set(after) == set(before)
    assert not torch.equal(after["visual.attn_pool.query"], before["visual.attn_pool.query"])
    tuned, _ = load(result.final_weights)
    assert tuned.config.vision.pool_type == "map" and tuned.config.text.pool_type == "last"
