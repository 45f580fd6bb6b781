"""models.layers.attention: the plain form it trains short sequences with on the CPU gives
torch's fused attention's outputs and gradients, and whole-model gradients stay open_clip's."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipforge.factory import create_model
from clipforge.losses import ClipLoss
from clipforge.models.layers import _plain_attention, attention


def _qkv(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def _output_and_grads(fn, q, k, v, is_causal: bool) -> list[torch.Tensor]:
    out = fn(q, k, v, is_causal=is_causal)  # (batch, heads, tokens, head_dim)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return [out.detach(), *grads]


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [(4, 2, 37, 32), (3, 4, 16, 16), (2, 2, 1, 8)])
def test_plain_form_matches_fused_kernel(shape: tuple[int, ...], is_causal: bool) -> None:
    for dtype, tol in [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)]:
        q, k, v = _qkv(shape, dtype)
        ours = _output_and_grads(lambda *a, is_causal: _plain_attention(*a, is_causal), q, k, v, is_causal)
        ref = _output_and_grads(F.scaled_dot_product_attention, q, k, v, is_causal)
        for name, a, b in zip(["output", "dq", "dk", "dv"], ours, ref):
            assert a.dtype == b.dtype == dtype
            err = (a.float() - b.float()).abs().max().item()
            assert err <= tol * max(1.0, b.float().abs().max().item()), f"{dtype} {name}: {err}"


def test_dispatch_plain_only_when_training_short_sequences_on_cpu() -> None:
    q, k, v = _qkv((2, 2, 20, 8), torch.float32)
    with torch.no_grad():  # inference keeps the fused kernel, bit for bit
        assert torch.equal(attention(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert torch.equal(attention(q, k, v, is_causal=True), _plain_attention(q, k, v, True))
    long = _qkv((1, 1, 300, 8), torch.float32)  # past the plain form's length: fused
    assert torch.equal(attention(*long), F.scaled_dot_product_attention(*long))
    mask = torch.zeros(20, 20)
    assert torch.equal(attention(q, k, v, attn_mask=mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_gradients_match_open_clip(precision: str, make_tokens) -> None:
    """A training step's loss and parameter gradients equal those of open_clip's CLIP (which
    runs torch's fused attention) on the same weights and batch."""
    model = create_model("tiny-vit", seed=3).train()
    cfg = model.config.to_dict()
    twin = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])
    twin.load_state_dict(model.state_dict())
    twin.train()
    images = torch.randn(6, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(4))
    tokens = make_tokens(6, [3, 9, 20, 40, 75, 5])
    losses, grads = [], []
    for net in (model, twin):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = ClipLoss()(*net(images, tokens))
        loss.backward()
        losses.append(loss.item())
        grads.append({name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    tol = 1e-5 if precision == "fp32" else 5e-2
    assert abs(losses[0] - losses[1]) <= tol
    for name, ours in grads[0].items():
        ref = grads[1][name]
        err = (ours - ref).abs().max().item()
        assert err <= tol * max(1.0, ref.abs().max().item()), f"{precision} {name}: {err}"
