"""One set of image rules for every part of clipforge: a TIFF and a 16-bit PNG train, index,
embed and evaluate alike, and a WebDataset sample holding png + jpg and txt + json is read the
same way by training, ``embed`` (plain and compressed shards) and evaluation."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.data import CaptionedImages, load_items, make_loader
from clipforge.eval.eval_data import load_eval_data
from clipforge.images import IMAGE_SUFFIXES, decode_image, find_images, open_image
from clipforge.index import build_index, open_searcher
from clipforge.inference import embed_collection, embed_images, list_images, open_images
from clipforge.tokenizer import tokenize


@pytest.fixture(scope="module")
def model():
    return clipforge.create_model("tiny-vit", seed=0)


@pytest.fixture(scope="module")
def preprocess(model):
    return clipforge.create_preprocess(model)


def grey(seed: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)


@pytest.fixture
def wide_formats(tmp_path: Path) -> Path:
    """A TIFF, a 16-bit grey PNG and the same grey picture as an 8-bit PNG, each captioned."""
    root = tmp_path / "wide"
    root.mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "a.tif")
    base = grey(2)
    Image.fromarray(base.astype(np.uint16) * 257).save(root / "b16.png")  # 16-bit: 0..65535
    Image.fromarray(base).save(root / "c8.png")
    for name in ("a", "b16", "c8"):
        (root / f"{name}.txt").write_text(f"a picture called {name}\n")
    return root


def test_every_source_lists_tiff(wide_formats: Path) -> None:
    assert {".tif", ".tiff"} <= IMAGE_SUFFIXES
    assert [p.name for p in find_images(wide_formats)] == ["a.tif", "b16.png", "c8.png"]
    assert [p.name for p in list_images(wide_formats)] == ["a.tif", "b16.png", "c8.png"]
    assert [it.key for it in load_items(wide_formats)] == ["a.tif", "b16.png", "c8.png"]


def test_16_bit_png_decodes_to_its_8_bit_picture(wide_formats: Path) -> None:
    wide = open_image(wide_formats / "b16.png")
    assert Image.open(wide_formats / "b16.png").mode.startswith("I")  # PIL's own: clipped to white by convert
    assert np.array_equal(np.asarray(wide.convert("RGB")), np.asarray(open_image(wide_formats / "c8.png").convert("RGB")))


def test_tiff_and_16_bit_png_train_index_embed_and_evaluate_alike(model, preprocess, wide_formats: Path,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    # Training: every file is a sample with its caption, none is skipped, the 16-bit PNG is the 8-bit one.
    items = load_items(wide_formats)
    assert [it.captions for it in items] == [(f"a picture called {n}",) for n in ("a", "b16", "c8")]
    samples = CaptionedImages(items, preprocess)
    assert torch.equal(samples[1][0], samples[2][0])
    batches = list(make_loader(items, preprocess, tokenize, 3, seed=0))
    assert len(batches) == 1 and batches[0].skipped == []
    # embed (in memory): three rows, the two grey pictures equal.
    result = embed_images(model, preprocess, list_images(wide_formats))
    assert result.skipped == {} and result.embeddings.shape[0] == 3
    np.testing.assert_allclose(result.embeddings[1], result.embeddings[2], atol=1e-6)
    # Index: all three added, stored vectors those of embed (the index runs bf16 where native).
    checkpoint = clipforge.save(model, tmp_path / "tiny.safetensors")
    report = build_index(wide_formats, str(checkpoint), tmp_path / "idx", workers=0)
    assert (report.added, report.unreadable) == (3, {})
    searcher = open_searcher(tmp_path / "idx")
    try:
        ids, vectors = searcher.store.all_vectors()
        paths = [Path(searcher.store.items(ids)[i].path).name for i in ids]
        assert paths == ["a.tif", "b16.png", "c8.png"]
        assert (np.sum(vectors * result.embeddings, axis=1) > 0.999).all()
    finally:
        searcher.close()
    # Evaluation: a class folder of both formats.
    for cls, names in {"colour": ["a.tif"], "grey": ["b16.png", "c8.png"]}.items():
        (tmp_path / "eval" / cls).mkdir(parents=True)
        for name in names:
            (tmp_path / "eval" / cls / name).write_bytes((wide_formats / name).read_bytes())
    data = load_eval_data(str(tmp_path / "eval"))
    assert data.labels == [0, 1, 1]
    assert np.array_equal(np.asarray(data.images[1]()), np.asarray(data.images[2]()))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def mixed_samples() -> tuple[list[tuple[str, dict[str, bytes]]], list[Image.Image]]:
    """s0 has a png AND a jpg, a txt AND a json; s1 a jpg with a json caption; s2 a png with a txt."""
    pictures = [Image.fromarray(np.stack([grey(10 + i)] * 3, axis=-1)) for i in range(4)]
    samples = [
        ("s0", {"png": encoded(pictures[0], "PNG"), "jpg": encoded(pictures[1], "JPEG"), "txt": b"from the txt",
                "json": json.dumps({"captions": ["first json caption", "second json caption"],
                                    "concept": "cat"}).encode()}),
        ("s1", {"jpg": encoded(pictures[2], "JPEG"), "json": json.dumps({"caption": "one", "concept": "dog"}).encode()}),
        ("s2", {"png": encoded(pictures[3], "PNG"), "txt": b"line one\nline two\n",
                "json": json.dumps({"concept": "dog"}).encode()}),
    ]  # fmt: skip
    return samples, pictures


def test_one_shard_is_read_the_same_way_everywhere(model, preprocess, mixed_samples, tmp_path: Path) -> None:
    samples, _ = mixed_samples
    plain = write_shard(tmp_path / "plain.tar", samples)
    packed = write_shard(tmp_path / "packed.tar.gz", samples, "w:gz")
    jpg_of_s0 = np.asarray(decode_image(samples[0][1]["jpg"]))
    expected_captions = [("first json caption", "second json caption"), ("one",), ("line one", "line two")]
    # Training: the jpg is the image (open_clip's order), the json's captions win over the txt.
    items = load_items(str(plain))
    assert [it.captions for it in items] == expected_captions
    assert [it.concept for it in items] == ["cat", "dog", "dog"]
    assert np.array_equal(np.asarray(items[0].open_image()), jpg_of_s0)
    # embed: the same images and captions from a plain and a compressed shard.
    for shard in (plain, packed):
        records = open_images(str(shard)).records
        assert [r.key for r in records] == ["s0", "s1", "s2"]
        assert [r.read()[1] for r in records] == expected_captions
        assert np.array_equal(np.asarray(decode_image(records[0].read()[0])), jpg_of_s0)
    summary = embed_collection(model, preprocess, str(plain), tmp_path / "out", workers=0)
    assert (summary.rows, summary.skipped) == (3, 0)
    # Evaluation: the same images, all captions, the concepts as classes.
    data = load_eval_data(str(plain))
    assert data.captions == [list(c) for c in expected_captions]
    assert data.classnames == ["cat", "dog"] and data.labels == [0, 1, 1]
    assert np.array_equal(np.asarray(data.images[0]().convert("L")), np.asarray(Image.fromarray(jpg_of_s0).convert("L")))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    wide = Image.fromarray(np.zeros((20, 60, 3), dtype=np.uint8))  # 60 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": a phone held upright
    buffer = io.BytesIO()
    wide.save(buffer, "JPEG", exif=exif)
    upright = decode_image(buffer.getvalue())
    assert upright.size == (20, 60) and upright.format == "JPEG"


def test_only_images_py_walks_folders_or_names_suffixes() -> None:
    """The rule of the image module: nowhere else a folder walk or a set of image suffixes."""
    package = Path(clipforge.__file__).parent
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py")
                 if p.name != "images.py" and ("rglob(" in p.read_text() or "os.walk(" in p.read_text()
                                               or '".webp"' in p.read_text())]  # fmt: skip
    assert offenders == []


def test_a_dark_16_bit_png_stays_dark() -> None:
    """16-bit samples are scaled as 16-bit even when none exceeds 255 (not taken as 8-bit)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint16)).save(buffer, "PNG")  # 200 / 65535: near black
    assert np.asarray(decode_image(buffer.getvalue())).max() == 0
