"""Loading and conversion, proven against open_clip and transformers on random weights."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import clipforge
from clipforge.checkpoint import convert, detect_format, load
from clipforge.checkpoint.hf import LAYER_KEYS, TOP_LEVEL_KEYS
from clipforge.errors import CheckpointError
from clipforge.factory import create_model
from clipforge.tokenizer import tokenize

TEXTS = ["a photo of a cat", "an emoji of a red heart", "", "dogs running on a beach at sunset"]


def _inputs(model):
    size = model.image_size
    images = torch.randn(len(TEXTS), 3, size, size, generator=torch.Generator().manual_seed(0))
    return images, tokenize(TEXTS)


def _features(model, images, tokens):
    with torch.no_grad():
        img, txt, _ = model(images, tokens)
    return img, txt


def _open_clip_features(pt: Path, images, tokens):
    cfg = json.loads(pt.with_suffix(".json").read_text())
    ref = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])
    ref.load_state_dict(torch.load(pt, weights_only=True), strict=True)
    ref.eval()
    with torch.no_grad():
        return F.normalize(ref.encode_image(images), dim=-1), F.normalize(ref.encode_text(tokens), dim=-1)


def _hf_features(directory: Path, images, tokens):
    from transformers import CLIPModel

    ref = CLIPModel.from_pretrained(directory).eval()
    with torch.no_grad():
        img = ref.get_image_features(pixel_values=images)
        txt = ref.get_text_features(input_ids=tokens)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def _assert_close(ours, theirs):
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "name",
    ["tiny-vit", "tiny-vit-quickgelu", "tiny-rn", "tiny-rn-quickgelu",
     pytest.param("ViT-B-32-quickgelu", marks=pytest.mark.slow),
     pytest.param("RN50-quickgelu", marks=pytest.mark.slow)],
)  # fmt: skip
def test_open_clip_parity(name: str, tmp_path: Path) -> None:
    model = create_model(name, seed=0)
    images, tokens = _inputs(model)
    pt = convert_from(model, tmp_path, "open_clip", "model.pt")
    _assert_close(_features(model, images, tokens), _open_clip_features(pt, images, tokens))
    reloaded, _ = load(pt)
    assert reloaded.config == model.config
    _assert_close(_features(reloaded, images, tokens), _features(model, images, tokens))


@pytest.mark.parametrize(
    "name", ["tiny-vit", "tiny-vit-quickgelu", pytest.param("ViT-B-32-quickgelu", marks=pytest.mark.slow)]
)
def test_hugging_face_parity(name: str, tmp_path: Path) -> None:
    model = create_model(name, seed=0)
    images, tokens = _inputs(model)
    directory = convert_from(model, tmp_path, "hf", "hf")
    _assert_close(_features(model, images, tokens), _hf_features(directory, images, tokens))


def convert_from(model, tmp_path: Path, to: str, name: str) -> Path:
    src = clipforge.save(model, tmp_path / "src.safetensors")
    return convert(src, tmp_path / name, to=to)


def test_hf_to_clipforge_to_hf_round_trip_is_identical(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel

    hf_config = CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         hidden_act="quick_gelu", eos_token_id=49407),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(hf_config).save_pretrained(tmp_path / "hf")
    original = load_file(tmp_path / "hf" / "model.safetensors")
    convert(tmp_path / "hf", tmp_path / "ours.safetensors", to="clipforge")
    convert(tmp_path / "ours.safetensors", tmp_path / "hf2", to="hf")
    again = load_file(tmp_path / "hf2" / "model.safetensors")
    original = {k: v for k, v in original.items() if not k.endswith("position_ids")}
    assert set(again) == set(original)
    assert all(torch.equal(original[k], again[k]) for k in original)


def test_hf_tables_cover_every_hf_parameter() -> None:
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2),
                     vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=16)  # fmt: skip
    hf_keys = {k for k in CLIPModel(cfg).state_dict() if not k.endswith("position_ids")}
    mapped = {hf for hf, _, _ in TOP_LEVEL_KEYS.values()}
    per_layer = set(LAYER_KEYS.values()) | {f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")}
    for prefix in ("text_model.encoder.layers.0.", "vision_model.encoder.layers.0."):
        mapped |= {prefix + k for k in per_layer}
    assert hf_keys == mapped


class _OpenAIStyleArchive(torch.nn.Module):
    """Our modules under OpenAI's names plus the scalars OpenAI's archives carry as buffers."""

    def __init__(self, model) -> None:
        super().__init__()
        for name, child in model.named_children():
            setattr(self, name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.register_buffer("input_resolution", torch.tensor(model.image_size))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(49408))
        self._model = [model]  # a list: not registered twice

    def forward(self, images, tokens):
        return self._model[0](images, tokens)


def _openai_conventional(name: str):
    """Plain state dicts carry no head count: OpenAI's build_model infers heads = width // 64,
    so the tiny models these tests save that way follow the same rule."""
    from clipforge.config import apply_overrides
    from clipforge.registry import get_model_config

    return create_model(apply_overrides(get_model_config(name), {"vision.head_width": 64, "text.heads": 1}), seed=0)


def test_openai_torchscript_archive_loads(tmp_path: Path) -> None:
    model = _openai_conventional("tiny-vit-quickgelu")
    images, tokens = _inputs(model)
    with pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(_OpenAIStyleArchive(model), (images, tokens), check_trace=False)
    torch.jit.save(traced, str(tmp_path / "ViT-tiny.pt"))
    assert detect_format(tmp_path / "ViT-tiny.pt") == "openai_jit"
    loaded, preprocess = load(tmp_path / "ViT-tiny.pt")
    assert loaded.config.quick_gelu
    _assert_close(_features(loaded, images, tokens), _features(model, images, tokens))


def test_open_clip_training_checkpoint_with_module_prefix(tmp_path: Path) -> None:
    model = _openai_conventional("tiny-rn-quickgelu")
    state = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(state, tmp_path / "epoch_3.pt")
    loaded, _ = load(tmp_path / "epoch_3.pt")
    images, tokens = _inputs(model)
    _assert_close(_features(loaded, images, tokens), _features(model, images, tokens))


def test_shape_mismatch_missing_and_unexpected_keys_name_the_key(tmp_path: Path) -> None:
    state = create_model("tiny-vit-quickgelu", seed=0).state_dict()
    broken = dict(state)
    broken["ln_final.bias"] = torch.zeros(3)
    torch.save(broken, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="'ln_final.bias'"):
        load(tmp_path / "shape.pt")
    missing = {k: v for k, v in state.items() if k != "visual.ln_post.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing key 'visual.ln_post.weight'"):
        load(tmp_path / "missing.pt")
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="unexpected key 'extra.weight'"):
        load(tmp_path / "extra.pt")


def test_activation_mismatch_is_an_error(tmp_path: Path) -> None:
    model = create_model("tiny-vit", seed=0)  # GELU
    directory = convert_from(model, tmp_path, "hf", "hf")
    with pytest.raises(CheckpointError, match="activation mismatch.*GELU"):
        load(directory, quick_gelu=True)
    with pytest.raises(CheckpointError, match="activation mismatch"):
        load(tmp_path / "src.safetensors", quick_gelu=True)


def test_resnet_to_hf_is_a_clear_error(tmp_path: Path) -> None:
    src = clipforge.save(create_model("tiny-rn", seed=0), tmp_path / "rn.safetensors")
    with pytest.raises(CheckpointError, match="no ResNet CLIP"):
        convert(src, tmp_path / "hf", to="hf")
    assert not (tmp_path / "hf").exists()


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"visual.proj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_corrupt_and_empty_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        load(tmp_path / "empty.pt")
    src = clipforge.save(create_model("tiny-vit", seed=0), tmp_path / "m.safetensors")
    data = src.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="neither a file"):
        load(tmp_path / "nope.pt")
