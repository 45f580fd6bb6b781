"""ONNX export, the onnxruntime runner and int8 quantisation, on tiny random models: the graphs
give the fp32 torch model's normalised features (dynamic batch and text length), int8 stays
within a measured cosine of fp32, and errors are sentences."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from clipforge.errors import ClipforgeError  # noqa: E402
from clipforge.factory import create_model  # noqa: E402
from clipforge.inference.onnx_export import META_FILE, export_onnx  # noqa: E402
from clipforge.inference.onnx_runtime import OnnxEngine  # noqa: E402
from clipforge.inference.quantize import quantization_cost, quantize_int8  # noqa: E402
from clipforge.tokenizer import tokenize  # noqa: E402

TOL = 1e-4  # max abs difference of normalised features, fp32 torch vs onnxruntime
# Measured on tiny-vit and tiny-rn (seeds 0-2, 64 random images, 11 texts), min over rows:
# int8 image cosine >= 0.99986, text >= 0.99879. The bounds leave room for other CPUs' kernels.
INT8_IMAGE_COS = 0.999
INT8_TEXT_COS = 0.995

TEXTS = [
    "a",
    "a photo of a cat",
    "a diagram of the moon over a small red house, drawn in pencil",
    "word " * 100,  # truncated to exactly 77 tokens, EOT in the last position
    "x y",
]


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def exported(request, tmp_path_factory):
    model = create_model(request.param, seed=0)
    out = tmp_path_factory.mktemp(request.param)
    export_onnx(model, out / "fp32")
    quantize_int8(out / "fp32", out / "int8")
    return model, out


def _reference_images(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model.encode_image(images), dim=-1)


def _reference_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model.encode_text(tokens), dim=-1)


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_image_features_match_torch(exported, batch):
    model, out = exported
    engine = OnnxEngine(out / "fp32", threads=1)
    images = torch.randn(batch, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(batch))
    got = engine.encode_images(images)
    assert got.dtype == torch.float32 and got.shape == (batch, model.config.embed_dim)
    assert (got - _reference_images(model, images)).abs().max() <= TOL
    assert (engine.encode_images(images.numpy()) - got).abs().max() == 0  # numpy in, same answer


@pytest.mark.parametrize("rows", [[0], [3], [1, 2], [0, 1, 2, 3, 4], [4, 0]])
def test_text_features_match_torch_at_every_length(exported, rows):
    """Batches trimmed to 2, 6, 14 and 77 positions, batch 1 included: the dynamic sequence
    axis keeps the causal mask and the end-of-text gather right."""
    model, out = exported
    engine = OnnxEngine(out / "fp32", threads=1)
    tokens = tokenize([TEXTS[i] for i in rows], truncate=True)  # (batch, 77)
    assert (engine.encode_tokens(tokens) - _reference_tokens(model, tokens)).abs().max() <= TOL


def test_graph_runs_any_sequence_length_directly(exported):
    model, out = exported
    session = OnnxEngine(out / "fp32", threads=1)._text
    tokens = tokenize(TEXTS, truncate=True)
    for n in (2, 9, 40, 77):  # a prefix with an end-of-text token in its last position
        ids = tokens[:, :n].clone()
        ids[:, -1] = 49407
        got = session.run(None, {"input_ids": ids.numpy()})[0]
        assert np.abs(got - _reference_tokens(model, ids).numpy()).max() <= TOL


def test_encode_texts_keeps_order_and_matches_torch(exported):
    model, out = exported
    engine = OnnxEngine(out / "fp32", threads=1, text_batch_size=2)  # batches after sorting
    want = _reference_tokens(model, tokenize(TEXTS, truncate=True))
    assert (engine.encode_texts(TEXTS) - want).abs().max() <= TOL
    assert engine.encode_texts([]).shape == (0, model.config.embed_dim)


def test_int8_stays_close_to_fp32(exported):
    model, out = exported
    fp32, int8 = OnnxEngine(out / "fp32", threads=1), OnnxEngine(out / "int8", threads=1)
    images = torch.randn(16, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    classes = [[f"a photo of a {c}.", f"a drawing of a {c}."] for c in ("cat", "dog", "car", "tree")]
    cost = quantization_cost(fp32, int8, images=images, texts=TEXTS, class_prompts=classes)
    assert cost.image_cosine_min >= INT8_IMAGE_COS
    assert cost.text_cosine_min >= INT8_TEXT_COS
    assert 0.0 <= cost.zeroshot_agreement <= 1.0 and cost.classes == 4 and cost.images == 16
    meta = json.loads((out / "int8" / META_FILE).read_text())
    assert meta["quantization"]["kind"] == "dynamic int8"
    same = quantization_cost(fp32, fp32, images=images, class_prompts=classes)
    assert same.zeroshot_agreement == 1.0 and same.image_cosine_min > 1 - 1e-9


def test_meta_describes_the_export(exported):
    model, out = exported
    meta = json.loads((out / "fp32" / META_FILE).read_text())
    assert meta["embed_dim"] == model.config.embed_dim and meta["context_length"] == 77
    assert meta["image_size"] == model.image_size and len(meta["image_mean"]) == 3
    assert meta["model_config"] == json.loads(model.config.to_json())
    assert meta["files"] == {"image": "image_encoder.onnx", "text": "text_encoder.onnx"}


def test_torchscript_exporter_matches_and_keeps_model_mode(tmp_path):
    """The legacy exporter restores its wrapper's mode, which would put a ResNet's BatchNorm
    in training mode; export_onnx keeps the caller's mode."""
    model = create_model("tiny-rn", seed=1)
    export_onnx(model, tmp_path, exporter="torchscript", towers=("image",))
    assert not any(m.training for m in model.modules())
    images = torch.randn(3, 3, model.image_size, model.image_size)
    engine = OnnxEngine(tmp_path, threads=1)
    assert (engine.encode_images(images) - _reference_images(model, images)).abs().max() <= TOL
    with pytest.raises(ClipforgeError, match="no text tower"):
        engine.encode_texts(["a cat"])


def test_errors_are_sentences(tmp_path, tiny_vit):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ClipforgeError, match="is a file"):
        export_onnx(tiny_vit, a_file)
    with pytest.raises(ClipforgeError, match="cannot create"):
        export_onnx(tiny_vit, a_file / "sub")
    with pytest.raises(ClipforgeError, match="towers"):
        export_onnx(tiny_vit, tmp_path / "x", towers=("audio",))
    with pytest.raises(ClipforgeError, match="export-onnx"):
        OnnxEngine(tmp_path)
    with pytest.raises(ClipforgeError, match="must differ"):
        quantize_int8(_tiny_text_export(tmp_path), tmp_path / "t")


def _tiny_text_export(tmp_path: Path) -> Path:
    export_onnx(create_model("tiny-vit", seed=0), tmp_path / "t", towers=("text",), exporter="torchscript")
    return tmp_path / "t"


def test_runner_rejects_bad_inputs(exported):
    model, out = exported
    engine = OnnxEngine(out / "fp32", threads=1)
    with pytest.raises(ClipforgeError, match="shape"):
        engine.encode_images(torch.zeros(1, 3, model.image_size + 1, model.image_size))
    too_long = torch.zeros(1, 80, dtype=torch.long)
    too_long[0, 79] = 49407
    with pytest.raises(ClipforgeError, match="context length"):
        engine.encode_tokens(too_long)
    with pytest.raises(ClipforgeError, match="not available"):
        OnnxEngine(out / "fp32", providers=["NoSuchExecutionProvider"])


def test_cli_export_onnx(tmp_path):
    done = _clipforge("export-onnx", "tiny-vit", "--out", str(tmp_path / "o"), "--int8")
    assert done.returncode == 0, done.stderr
    for sub in ("", "int8"):
        for name in ("image_encoder.onnx", "text_encoder.onnx", META_FILE):
            assert (tmp_path / "o" / sub / name).is_file()
    assert done.stdout.count("wrote") == 6
    (tmp_path / "f").write_text("x")
    done = _clipforge("export-onnx", "tiny-vit", "--out", str(tmp_path / "f"))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "is a file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _clipforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipforge", *args], capture_output=True, text=True, timeout=300)
