"""Evaluation tasks on real files and real oracles (torchmetrics, a brute-force recall)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge.errors import DataError
from clipforge.eval.clip_score import clip_score
from clipforge.eval.eval_data import load_eval_data
from clipforge.eval.linear_probe import linear_probe
from clipforge.eval.retrieval import retrieval_metrics
from clipforge.eval.run import run_eval


def _images(n: int, size: int = 32) -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


@pytest.mark.slow
def test_clip_score_equals_torchmetrics_on_the_converted_model(tmp_path: Path) -> None:
    from torchmetrics.multimodal.clip_score import CLIPScore

    model = clipforge.create_model("tiny-vit", seed=0)
    # torchmetrics only accepts paths containing "openai" for CLIP models, hence the name.
    hf_dir = tmp_path / "openai-tiny-clip"
    clipforge.convert(clipforge.save(model, tmp_path / "m.safetensors"), hf_dir, to="hf")
    images = _images(4)  # already at the model's size: both preprocessings only normalise
    captions = ["a photo of a cat", "a red square", "two dogs playing", "an emoji of a rocket"]
    metric = CLIPScore(model_name_or_path=str(hf_dir))
    pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    expected = metric(pixels, captions).item()
    ours = clip_score(model, images, captions, convention="torchmetrics").item()
    assert ours == pytest.approx(expected, abs=1e-3)
    per_pair = clip_score(model, images, captions, convention="torchmetrics", reduce=False)
    for image, caption, score in zip(pixels, captions, per_pair):  # one pair: max(100 cos, 0)
        single = CLIPScore(model_name_or_path=str(hf_dir))(image[None], [caption]).item()
        assert score.item() == pytest.approx(single, abs=1e-3)
    hessel = clip_score(model, images, captions, convention="hessel", reduce=False)
    assert torch.allclose(hessel, per_pair * 2.5 / 100, atol=1e-6)


def test_retrieval_matches_a_brute_force_count() -> None:
    g = torch.Generator().manual_seed(1)
    images = F.normalize(torch.randn(20, 8, generator=g), dim=-1)
    owner = [i // 3 for i in range(60) if i // 3 < 20]
    texts = F.normalize(images[owner] + 0.8 * torch.randn(len(owner), 8, generator=g), dim=-1)
    ours = retrieval_metrics(images, texts, owner, ks=(1, 5))
    sims = texts @ images.T
    for k in (1, 5):
        hits = sum(owner[t] in sorted(range(20), key=lambda i: -sims[t, i])[:k] for t in range(len(owner)))
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(hits / len(owner))
        found = 0
        for i in range(20):
            ranked = sorted(range(len(owner)), key=lambda t: -sims[t, i])[:k]
            found += any(owner[t] == i for t in ranked)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(found / 20)


def test_linear_probe_separates_separable_classes() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    labels = torch.arange(3).repeat(40)
    feats = centres[labels] + torch.randn(120, 16, generator=g)
    result = linear_probe(feats[:90], labels[:90], feats[90:], labels[90:])
    assert result["acc1"] > 0.9 and 1e-6 <= result["C"] <= 1e7


def test_cli_benchmark_layout_on_class_folders(tmp_path: Path) -> None:
    for cls, colour in (("red_square", "red"), ("blue_square", "blue")):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), colour).save(tmp_path / "data" / cls / f"{i}.png")
    clipforge.save(clipforge.create_model("tiny-vit", seed=0), tmp_path / "m.safetensors")
    result = run_eval("zeroshot", str(tmp_path / "m.safetensors"), str(tmp_path / "data"), tmp_path / "out")
    assert {"dataset", "model", "pretrained", "task", "metrics"} <= set(result)
    assert result["task"] == "zeroshot_classification"
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(result["metrics"])
    written = json.loads((tmp_path / "out" / "zeroshot_classification_data.json").read_text())
    assert written == result
    assert (tmp_path / "out" / "zeroshot_classification_data_confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert load_eval_data(str(tmp_path / "data")).classnames == ["blue square", "red square"]


def test_missing_local_data_sets_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_eval_data(f"cifar10:{tmp_path}")
    with pytest.raises(DataError, match="does not exist"):
        load_eval_data(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_style_shift_renders_the_same_concepts_in_every_style(tmp_path: Path) -> None:
    from clipforge.eval.shift import NOTO_FONT, available_styles, render_styles, shift_eval
    from clipforge.eval.templates import load_templates

    chars = ["\U0001F44B", "\U0001F680", "\u2764\ufe0f", "\U0001F355"]
    concepts = ["waving hand", "rocket", "red heart", "pizza"]
    images = [Image.new("RGB", (48, 48), "white") for _ in chars]
    if not NOTO_FONT.is_file():  # scripts/test installs the font; elsewhere the error says how
        with pytest.raises(DataError, match="fonts-noto-color-emoji"):
            render_styles(chars, images, 32)
        return
    styled, keep = render_styles(chars, images, 32)
    assert keep == [0, 1, 2, 3] and set(styled) == set(available_styles())
    noto = styled["noto color emoji"][1]
    assert noto.size == (32, 32) and len(np.unique(np.asarray(noto).reshape(-1, len(noto.getbands())), axis=0)) > 10  # a real colour drawing
    model = clipforge.create_model("tiny-vit", seed=0)
    rows = shift_eval(model, clipforge.create_preprocess(model), styled, concepts, load_templates("emoji"))
    assert [r["style"] for r in rows][0] == "openmoji (training style)" and rows[0]["drop_acc1"] == 0.0


def test_webdataset_shards_as_evaluation_data(tmp_path: Path) -> None:
    import io

    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "eval-000.tar")) as sink:
        for i, (concept, colour) in enumerate([("red square", "red"), ("blue square", "blue"), ("red square", "red")]):
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
            meta = {"captions": [f"a {concept}"], "concept": concept}
            sink.write({"__key__": f"k{i}", "png": buffer.getvalue(), "json": json.dumps(meta).encode()})
    data = load_eval_data(str(tmp_path / "eval-{000..000}.tar"))
    assert data.classnames == ["blue square", "red square"] and data.labels == [1, 0, 1]
    assert data.captions[1] == ["a blue square"] and data.images[0]().size == (32, 32)
