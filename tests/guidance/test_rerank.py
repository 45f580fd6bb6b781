"""Reranking real files: a folder (with an unreadable candidate) and a `clipforge embed` .npy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import clipforge
from clipforge.errors import DataError, TokenizerError
from clipforge.eval.clip_score import clip_score
from clipforge.guidance import rerank


def _candidates(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, colour in (("red", (220, 40, 40)), ("blue", (40, 70, 220)), ("green", (40, 180, 60))):
        image = Image.new("RGB", (40, 40), "white")
        ImageDraw.Draw(image).ellipse((4, 4, 36, 36), fill=colour)
        image.save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")


def test_folder_ranking_agrees_with_clip_score_and_counts_unreadable(tmp_path: Path) -> None:
    model = clipforge.create_model("tiny-vit", seed=0)
    _candidates(tmp_path / "c")
    result = rerank(model, tmp_path / "c", "a red circle")
    assert len(result.rows) == 3 and list(result.skipped) == [str(tmp_path / "c" / "broken.jpg")]
    cosines = [r["cosine"] for r in result.rows]
    assert cosines == sorted(cosines, reverse=True) and [r["rank"] for r in result.rows] == [1, 2, 3]
    images = [Image.open(r["item"]).convert("RGB") for r in result.rows]
    expected = clip_score(model, images, ["a red circle"] * 3, reduce=False)  # the eval package's CLIPScore
    assert torch.allclose(torch.tensor([r["clip_score"] for r in result.rows]), expected, atol=1e-4)


@pytest.mark.slow
def test_trained_model_puts_the_matching_image_first(trained_pair, tmp_path: Path) -> None:
    model, _ = clipforge.load(trained_pair[1])
    _candidates(tmp_path / "c")
    for prompt, best in (("a red circle", "red.png"), ("a blue circle", "blue.png")):
        assert Path(rerank(model, tmp_path / "c", prompt).rows[0]["item"]).name == best


@pytest.mark.slow
def test_embedding_files_give_the_same_ranking_as_the_images(tmp_path: Path) -> None:
    model = clipforge.create_model("tiny-vit", seed=0)
    clipforge.save(model, tmp_path / "m.safetensors")
    _candidates(tmp_path / "c")
    done = subprocess.run([sys.executable, "-m", "clipforge", "embed", "--model", str(tmp_path / "m.safetensors"),
                           "--images", str(tmp_path / "c"), "--out", str(tmp_path / "e.npy"), "--precision", "fp32"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    from_npy = rerank(model, tmp_path / "e.npy", "a blue circle")
    from_images = rerank(model, tmp_path / "c", "a blue circle")
    assert [r["item"] for r in from_npy.rows] == [r["item"] for r in from_images.rows]
    assert np.allclose([r["cosine"] for r in from_npy.rows], [r["cosine"] for r in from_images.rows], atol=1e-5)
    done = subprocess.run([sys.executable, "-m", "clipforge", "embed", "--model", str(tmp_path / "m.safetensors"),
                           "--images", str(tmp_path / "c"), "--out", str(tmp_path / "shards"), "--precision", "fp32"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    from_shard = rerank(model, tmp_path / "shards" / "img_emb" / "img_emb_00000.npy", "a blue circle")
    assert [r["item"] for r in from_shard.rows] == [r["item"] for r in from_images.rows]  # named by its parquet
    np.save(tmp_path / "wrong.npy", np.zeros((2, 7), dtype=np.float32))
    with pytest.raises(DataError, match="same model"):
        rerank(model, tmp_path / "wrong.npy", "a cat")


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    model = clipforge.create_model("tiny-vit", seed=0)
    _candidates(tmp_path / "c")
    with pytest.raises(DataError, match="empty"):
        rerank(model, tmp_path / "c", " ")
    with pytest.raises(TokenizerError, match="truncate"):
        rerank(model, tmp_path / "c", "word " * 100)
    assert len(rerank(model, tmp_path / "c", "word " * 100, truncate=True).rows) == 3
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="could be read"):
        rerank(model, only_bad, "a cat")
    with pytest.raises(DataError, match="does not exist"):
        rerank(model, tmp_path / "nowhere", "a cat")


def test_rerank_writes_json_and_html_sheet(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clipforge.cli import app

    clipforge.save(clipforge.create_model("tiny-vit", seed=0), tmp_path / "m.safetensors")
    _candidates(tmp_path / "c")
    done = CliRunner().invoke(app, ["rerank", str(tmp_path / "c"), "a red circle", "-m", str(tmp_path / "m.safetensors"),
                                    "--out", str(tmp_path / "out")])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "skipped 1 unreadable" in done.output
    summary = json.loads((tmp_path / "out" / "rerank.json").read_text())
    assert summary["candidates"] == 4 and summary["ranked"] == 3 and summary["skipped"] == 1
    page = (tmp_path / "out" / "rerank.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "broken.jpg" in page and "#1 CLIPScore" in page
