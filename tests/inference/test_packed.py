"""oneDNN-packed bf16 inference modules against the fp32 modules they replace (random weights)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.factory import create_model
from clipforge.inference.engine import Engine, EngineConfig, cpu_supports_bf16, model_fingerprint
from clipforge.inference.packed import (
    PackedLinear,
    PackedPatchEmbedding,
    PackedResidualBlock,
    can_pack,
    pack_for_inference,
)
from clipforge.models.layers import QuickGELU, ResidualAttentionBlock

pytestmark = pytest.mark.skipif(
    not (can_pack(torch.bfloat16, torch.device("cpu")) and cpu_supports_bf16()),
    reason="packing is for CPUs with native bf16 and a torch build with oneDNN's linear ops",
)
BF16_REL = 2e-2  # relative error of a bf16 block: a few ulps of bf16 (2**-8) through four GEMMs


def _block(act: type[nn.Module] | nn.Module, width: int = 64, heads: int = 4) -> ResidualAttentionBlock:
    torch.manual_seed(0)
    block = ResidualAttentionBlock(width, heads, 4.0, nn.GELU)
    block.mlp.gelu = act() if isinstance(act, type) else act
    for p in block.parameters():  # non-trivial biases and norms, so every fused term counts
        nn.init.normal_(p, std=0.3 if p.ndim == 1 else 0.15)
    return block.eval().requires_grad_(False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("act", [nn.GELU, QuickGELU, nn.GELU(approximate="tanh"), nn.SiLU], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_packed_block_equals_the_fp32_block(act, is_causal: bool) -> None:
    block = _block(act)
    x = torch.randn(3, 11, 64)
    with torch.inference_mode():
        reference = block(x, is_causal=is_causal)
        bf16 = copy.deepcopy(block).to(torch.bfloat16)
        plain = bf16(x.bfloat16(), is_causal=is_causal)
        packed = PackedResidualBlock(bf16)(x.bfloat16(), is_causal=is_causal)
    assert packed.dtype == torch.bfloat16 and packed.shape == reference.shape
    # as close to fp32 as the plain bf16 block is (same arithmetic, other rounding order); most of
    # either's error is the weights' rounding to bf16 (~4e-3 here)
    assert _rel(packed, reference) <= 1.25 * _rel(plain, reference) <= BF16_REL


def test_packed_block_runs_any_batch_and_length() -> None:
    block = _block(nn.GELU).to(torch.bfloat16)
    packed = PackedResidualBlock(block)
    with torch.inference_mode():
        for b, n in [(1, 1), (1, 50), (7, 3), (64, 77)]:
            x = torch.randn(b, n, 64).bfloat16()
            assert _rel(packed(x, is_causal=True), block(x, is_causal=True)) <= BF16_REL


def test_packed_linear_refuses_an_activation_with_a_residual() -> None:
    layer = PackedLinear(torch.randn(8, 4).bfloat16(), None, "gelu", "none")
    with pytest.raises(ValueError, match="residual"):
        layer(torch.randn(2, 4).bfloat16(), residual=torch.randn(2, 8).bfloat16())


@pytest.mark.parametrize("size", [64, 70])  # 70: pixels past the last whole patch are dropped, as by the conv
def test_packed_patch_embedding_equals_the_convolution(size: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 48, kernel_size=16, stride=16, bias=False).eval().requires_grad_(False)
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        reference = conv(x)
        packed = PackedPatchEmbedding(copy.deepcopy(conv).to(torch.bfloat16))(x.bfloat16())
    assert packed.shape == reference.shape == (2, 48, size // 16, size // 16)
    assert _rel(packed, reference) <= BF16_REL


@pytest.mark.parametrize("arch", ["tiny-vit", "tiny-vit-quickgelu", "tiny-rn"])
def test_packed_engine_matches_the_fp32_model(arch: str) -> None:
    model = create_model(arch, seed=0).eval().requires_grad_(False)
    engine = Engine(model, EngineConfig(precision="bf16"))
    expected = model.config.text.layers + (0 if model.config.vision.is_resnet else model.config.vision.layers + 1)
    assert engine.packed_modules == expected
    x = torch.randn(5, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    texts = ["a photo of a cat.", "", "a very long caption " * 30, "🐸"]
    with torch.no_grad():
        ref_images = F.normalize(model.encode_image(x), dim=-1)
        ref_texts = F.normalize(model.encode_text(engine_tokens(texts, model)), dim=-1)
    assert float(F.cosine_similarity(engine.encode_images(x), ref_images).min()) >= 0.999
    assert float(F.cosine_similarity(engine.encode_texts(texts), ref_texts).min()) >= 0.999


def engine_tokens(texts: list[str], model) -> torch.Tensor:
    from clipforge.tokenizer import tokenize

    return tokenize(texts, context_length=model.context_length, truncate=True)


def test_packing_changes_neither_the_callers_model_nor_the_fingerprint() -> None:
    model = create_model("tiny-vit", seed=0).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    packed = Engine(model, EngineConfig(precision="bf16"))
    plain = Engine(model, EngineConfig(precision="bf16", pack_weights=False))
    assert packed.packed_modules > 0 and plain.packed_modules == 0
    assert packed.fingerprint == plain.fingerprint == model_fingerprint(plain.model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.visual.conv1, nn.Conv2d)


def test_pack_for_inference_skips_what_it_cannot_pack() -> None:
    model = create_model("tiny-rn", seed=0).eval().requires_grad_(False).to(torch.bfloat16)
    resnet_before = copy.deepcopy(model.visual)
    assert pack_for_inference(model) == model.config.text.layers  # the text tower only
    assert pack_for_inference(model) == 0  # already packed
    assert str(model.visual) == str(resnet_before)
