"""Fine-tuning from a saved checkpoint with a locked image tower (LiT) or a locked text tower."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from clipforge.checkpoint import save
from clipforge.factory import create_model
from clipforge.train import load_run_config, train


def _finetune(tmp_path: Path, arch: str, **over) -> tuple[dict, dict]:
    start = create_model(arch, seed=7)
    init = save(start, tmp_path / "init.safetensors")
    cfg = load_run_config(None, {"data.train": "synthetic:32", "train.batch_size": 8, "train.steps": 3,
                                 "train.warmup_steps": 1, "train.lr": 0.01, "train.threads": 1,
                                 "train.init_from": str(init), "out_dir": str(tmp_path / "run"), **over})  # fmt: skip
    result = train(cfg)
    return {k: v.clone() for k, v in start.state_dict().items()}, load_file(result.final_weights)


def _changed(before: dict, after: dict, prefix: str) -> dict[str, bool]:
    return {k: not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)}


def test_lock_image_freezes_resnet_weights_and_batchnorm_statistics(tmp_path: Path) -> None:
    before, after = _finetune(tmp_path, "tiny-rn", **{"train.lock_image": True})
    visual = _changed(before, after, "visual.")
    assert any("running_mean" in k for k in visual)  # the BN statistics are in the comparison
    assert not any(visual.values()), [k for k, v in visual.items() if v]
    text = _changed(before, after, "transformer.")
    assert all(text.values()) and not torch.equal(before["text_projection"], after["text_projection"])


def test_lock_text_freezes_the_text_tower(tmp_path: Path) -> None:
    before, after = _finetune(tmp_path, "tiny-vit", **{"train.lock_text": True})
    text = {k: v for prefix in ("transformer.", "token_embedding", "positional_embedding", "ln_final", "text_projection")
            for k, v in _changed(before, after, prefix).items()}  # fmt: skip
    assert text and not any(text.values()), [k for k, v in text.items() if v]
    visual = _changed(before, after, "visual.")
    assert all(visual.values()), [k for k, v in visual.items() if not v]


def test_unlocked_resnet_updates_batchnorm_statistics(tmp_path: Path) -> None:
    # The control for the LiT test: without the lock the same run does move them.
    before, after = _finetune(tmp_path, "tiny-rn")
    assert _changed(before, after, "visual.bn1.running_mean")["visual.bn1.running_mean"]
