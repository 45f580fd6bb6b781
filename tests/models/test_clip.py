from __future__ import annotations

import math

import open_clip
import pytest
import torch

from clipforge.config import CLIPConfig
from clipforge.factory import create_model
from clipforge.models.clip import CLIP, MAX_LOGIT_SCALE
from clipforge.registry import get_model_config


def _open_clip_twin(model: CLIP) -> torch.nn.Module:
    """open_clip's own CLIP with our weights: the reference implementation as oracle."""
    cfg = model.config.to_dict()
    twin = open_clip.model.CLIP(
        cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"]
    )
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.eval()


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-vit-quickgelu", "tiny-rn", "tiny-rn-quickgelu"])
def test_features_match_open_clip(name: str, make_tokens) -> None:
    model = create_model(name, seed=1)
    twin = _open_clip_twin(model)
    size = model.image_size
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    tokens = make_tokens(3, [3, 20, 75])
    with torch.no_grad():
        ours = model(images, tokens)
        ref = twin(images, tokens)
    assert (ours[0] - ref[0]).abs().max() <= 1e-5
    assert (ours[1] - ref[1]).abs().max() <= 1e-5
    assert torch.allclose(ours[2], ref[2])


@pytest.mark.parametrize(
    "name,expected",
    # Parameter counts of OpenAI's released models (openai/CLIP model card / state dicts).
    [("ViT-B-32-quickgelu", 151_277_313), ("RN50-quickgelu", 102_007_137)],
)
def test_reference_parameter_counts(name: str, expected: int) -> None:
    model = CLIP(get_model_config(name))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_logit_scale_initialised_and_clamped(tiny_vit: CLIP) -> None:
    assert math.isclose(tiny_vit.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    model = create_model("tiny-vit", seed=0)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(MAX_LOGIT_SCALE)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == pytest.approx(math.log(MAX_LOGIT_SCALE))


def test_trimmed_text_equals_full_context(tiny_vit: CLIP, make_tokens) -> None:
    tokens = make_tokens(4, [1, 5, 9, 30])
    with torch.no_grad():
        trimmed = tiny_vit.encode_text(tokens, trim_padding=True)
        full = tiny_vit.encode_text(tokens, trim_padding=False)
    assert (trimmed - full).abs().max() <= 1e-5


def test_text_pools_at_end_of_text(tiny_vit: CLIP, make_tokens) -> None:
    tokens = make_tokens(2, [4, 4])
    changed = tokens.clone()
    changed[:, 7:] = 123  # after the end-of-text token: must not matter under the causal mask
    with torch.no_grad():
        a = tiny_vit.encode_text(tokens, trim_padding=False)
        b = tiny_vit.encode_text(changed, trim_padding=False)
    assert torch.allclose(a, b, atol=1e-6)


def test_forward_returns_normalised_features(tiny_rn: CLIP, make_tokens) -> None:
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        img, txt, scale = tiny_rn(images, make_tokens(2))
    assert img.shape == (2, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_gradient_checkpointing_gives_same_gradients(name: str, make_tokens) -> None:
    model = create_model(name, seed=3).train()
    size = model.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    tokens = make_tokens(2)

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        img, txt, scale = model(images, tokens)
        (scale * img @ txt.T).logsumexp(0).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    torch.manual_seed(0)
    plain = grads()
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    checkpointed = grads()
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-6)


def test_seeded_creation_is_reproducible_and_leaves_global_rng() -> None:
    state = torch.random.get_rng_state()
    a = create_model("tiny-vit", seed=7).state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    b = create_model("tiny-vit", seed=7).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_weights_stay_close_to_fp32(tiny_vit: CLIP, make_tokens) -> None:
    model = create_model("tiny-vit", seed=0).to(torch.bfloat16)
    images, tokens = torch.randn(4, 3, 32, 32), make_tokens(4)
    with torch.no_grad():
        img, txt, _ = model(images, tokens)
        ref_img, ref_txt, _ = tiny_vit(images, tokens)
    assert img.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity
    assert cos(img.float(), ref_img).min() > 0.99
    assert cos(txt.float(), ref_txt).min() > 0.99


def test_config_json_round_trip() -> None:
    for name in ["ViT-L-14-336-quickgelu", "RN50x64", "tiny-rn"]:
        cfg = get_model_config(name)
        assert CLIPConfig.from_json(cfg.to_json()) == cfg
