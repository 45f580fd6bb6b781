"""Every fast path of the inference engine against the fp32 model on random weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.errors import ClipforgeError
from clipforge.factory import create_model
from clipforge.inference.engine import Engine, EngineConfig, cpu_supports_bf16, resolve_precision
from clipforge.tokenizer import tokenize

TEXTS = [
    "a photo of a cat.",
    "dog",
    "",
    "an extremely long caption " * 20,  # truncated to the full context
    "a photo of a tree frog on a leaf.",
    "ünïcödé ✨ emoji 🐸 text",
    "x",
]


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def model(request):
    return create_model(request.param, seed=0).eval().requires_grad_(False)


def _images(model, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, model.image_size, model.image_size, generator=g)


def _reference_images(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model.encode_image(x), dim=-1)


def _reference_texts(model, texts: list[str]) -> torch.Tensor:
    """The full-context fp32 run: every text padded to context_length, no trimming, no sorting."""
    tokens = tokenize(texts, context_length=model.context_length, truncate=True)
    with torch.no_grad():
        return F.normalize(model.encode_text(tokens, trim_padding=False), dim=-1)


def _cos_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1).min())


def test_fp32_engine_equals_the_model(model) -> None:
    engine = Engine(model, EngineConfig(precision="fp32"))
    x = _images(model, 5)
    assert torch.allclose(engine.encode_images(x), _reference_images(model, x), atol=1e-5)
    assert torch.allclose(engine.encode_texts(TEXTS, batch_size=3), _reference_texts(model, TEXTS), atol=1e-5)


def test_trimmed_sorted_text_batches_equal_the_full_context_run(model) -> None:
    """Length sorting, per-batch trimming and restoring the order are exact in fp32."""
    engine = Engine(model, EngineConfig(precision="fp32"))
    texts = [f"a photo of a {'very ' * (i % 9)}small thing number {i}." for i in range(23)] + TEXTS
    for batch_size in (1, 4, 256):
        got = engine.encode_texts(texts, batch_size=batch_size)
        assert (got - _reference_texts(model, texts)).abs().max() <= 1e-5


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_engine_is_within_bf16_rounding_of_fp32(model) -> None:
    engine = Engine(model, EngineConfig(precision="bf16"))
    assert engine.model.text_projection.dtype == torch.bfloat16
    x = _images(model, 6)
    assert _cos_min(engine.encode_images(x), _reference_images(model, x)) >= 0.999
    assert _cos_min(engine.encode_texts(TEXTS), _reference_texts(model, TEXTS)) >= 0.999
    assert engine.encode_images(x).dtype == torch.float32


def test_engine_leaves_the_callers_model_alone(model) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Engine(model, EngineConfig(precision="bf16" if cpu_supports_bf16() else "fp32"))
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_channels_last_resnet_gives_the_same_features() -> None:
    model = create_model("tiny-rn", seed=1).eval()
    x = _images(model, 4)
    plain = Engine(model, EngineConfig(precision="fp32", channels_last=False)).encode_images(x)
    fast = Engine(model, EngineConfig(precision="fp32", channels_last=True))
    assert fast.channels_last
    assert (fast.encode_images(x) - plain).abs().max() <= 1e-5


def test_bad_inputs_are_clear_errors() -> None:
    model = create_model("tiny-vit", seed=0)
    engine = Engine(model, EngineConfig(precision="fp32"))
    with pytest.raises(ClipforgeError, match="batch, 3, H, W"):
        engine.encode_images(torch.zeros(3, 32, 32))
    with pytest.raises(ClipforgeError, match="token ids"):
        engine.encode_tokens(torch.zeros(2, model.context_length + 1, dtype=torch.long))
    with pytest.raises(ClipforgeError, match="unknown precision"):
        resolve_precision("int4", "cpu")  # type: ignore[arg-type]
    with pytest.raises(ClipforgeError, match="GPUs"):
        resolve_precision("fp16", "cpu")
    assert engine.encode_texts([]).shape == (0, model.config.embed_dim)


def test_auto_precision_follows_the_hardware() -> None:
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")


@pytest.mark.slow
def test_compiled_engine_matches_fp32_for_any_batch_size() -> None:
    """torch.compile (with weight freezing) and the power-of-two batch padding change nothing."""
    model = create_model("tiny-vit", seed=2).eval().requires_grad_(False)
    engine = Engine(model, EngineConfig(precision="fp32", compile=True, image_batch_size=4))
    x = _images(model, 7)  # chunks of 4 and 3 (padded to 4)
    assert (engine.encode_images(x) - _reference_images(model, x)).abs().max() <= 1e-4
    assert (engine.encode_images(x[:1]) - _reference_images(model, x[:1])).abs().max() <= 1e-4
    texts = TEXTS + ["a photo of a dog."] * 3
    assert (engine.encode_texts(texts, batch_size=4) - _reference_texts(model, texts)).abs().max() <= 1e-4
