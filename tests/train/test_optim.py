"""AdamW parameter groups by module type, and the warmup + cosine schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipforge.factory import create_model
from clipforge.train.optim import NORM_TYPES, lr_at, make_optimizer, param_groups


def _groups(model: nn.Module) -> tuple[set[int], set[int]]:
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    return {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_groups_follow_module_types(name: str) -> None:
    model = create_model(name)
    decay, no_decay = _groups(model)
    assert decay.isdisjoint(no_decay) and len(decay | no_decay) == len(list(model.parameters()))
    for module in model.modules():  # checked by type here too, independently of parameter names
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, (*NORM_TYPES, nn.Embedding)) or pname.endswith("bias"):
                assert id(p) in no_decay, (type(module).__name__, pname)
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and pname == "weight":
                assert id(p) in decay, (type(module).__name__, pname)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[i] for i in no_decay}
    assert {"logit_scale", "token_embedding.weight", "positional_embedding"} <= no_decay_names
    assert "visual.attnpool.positional_embedding" in no_decay_names if name == "tiny-rn" else \
        {"visual.class_embedding", "visual.positional_embedding"} <= no_decay_names  # fmt: skip
    assert {"text_projection", "transformer.resblocks.0.attn.in_proj_weight"} <= {names[i] for i in decay}


def test_siglip_bias_and_frozen_parameters() -> None:
    from clipforge.config import apply_overrides
    from clipforge.registry import get_model_config

    model = create_model(apply_overrides(get_model_config("tiny-vit"), {"init_logit_bias": -10.0}))
    assert id(model.logit_bias) in _groups(model)[1]
    model.visual.requires_grad_(False)
    decay, no_decay = _groups(model)
    frozen = {id(p) for p in model.visual.parameters()}
    assert frozen.isdisjoint(decay | no_decay)  # a locked tower is not in the optimiser at all


def test_optimizer_decays_only_its_decay_group() -> None:
    model = create_model("tiny-vit")
    opt = make_optimizer(model, lr=0.1, weight_decay=0.5, betas=(0.9, 0.98), eps=1e-6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only weight decay can move a parameter
    opt.step()
    after = dict(model.named_parameters())
    assert torch.allclose(after["text_projection"], before["text_projection"] * (1 - 0.1 * 0.5))
    assert torch.equal(after["ln_final.weight"], before["ln_final.weight"])
    assert torch.equal(after["logit_scale"], before["logit_scale"])


def test_schedule_warms_up_then_decays_to_zero() -> None:
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(150, 1.0, 10, 100) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at zero
    curve = [lr_at(s, 1.0, 10, 100) for s in range(100)]
    assert all(a <= b for a, b in zip(curve[:10], curve[1:10])) and all(a >= b for a, b in zip(curve[9:], curve[10:]))
    assert lr_at(0, 1.0, 0, 10) == pytest.approx(1.0)  # no warm-up
