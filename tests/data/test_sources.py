"""Data sources and loaders on real files: CSV, JSONL, folder, WebDataset, bad images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipforge.data import epoch_batches, load_items, make_loader
from clipforge.errors import DataError
from clipforge.tokenizer import tokenize
from clipforge.transforms import image_transform


def _images(root: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.new("RGB", (40, 30), (i * 20 % 255, 100, 200)).save(root / name)
        names.append(name)
    return names


def _loader(items, batch_size=4, **kw):
    return make_loader(items, image_transform(32), tokenize, batch_size, **kw)


def test_csv_with_bad_images_skips_and_counts(tmp_path: Path) -> None:
    names = _images(tmp_path, 6)
    (tmp_path / "zero.png").write_bytes(b"")
    good = (tmp_path / "img0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    rows = [f"{n},a picture number {i}" for i, n in enumerate(names)]
    rows += ["zero.png,empty file", "truncated.png,cut short", "missing.png,not there", "img1.png,"]
    (tmp_path / "data.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    items = load_items(tmp_path / "data.csv")
    assert len(items) == 9  # img1 listed twice is one image
    batches = list(_loader(items, batch_size=3, seed=1))
    assert len(batches) == 3 and all(b.images.shape == (3, 3, 32, 32) for b in batches)
    skipped = [k for b in batches for k in b.skipped]
    assert {s.split(" ")[0] for s in skipped} == {"zero.png", "truncated.png", "missing.png"}


def test_jsonl_folder_and_webdataset_sources(tmp_path: Path) -> None:
    import webdataset as wds

    names = _images(tmp_path, 4)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"image": n, "captions": [f"c{i}", f"d{i}"]}) for i, n in enumerate(names)))
    assert [len(it.captions) for it in load_items(tmp_path / "d.jsonl")] == [2, 2, 2, 2]
    folder = tmp_path / "folder"
    folder.mkdir()
    _images(folder, 3)
    (folder / "img0.txt").write_text("first caption\nsecond caption\n")
    items = load_items(folder)
    assert len(items) == 3 and items[0].captions == ("first caption", "second caption")
    with wds.TarWriter(str(tmp_path / "shard-000.tar")) as sink:
        for i, n in enumerate(names):
            sink.write({"__key__": f"k{i}", "png": (tmp_path / n).read_bytes(), "json": json.dumps({"captions": [f"t{i}"], "concept": f"c{i}"}).encode()})
    items = load_items(str(tmp_path / "shard-{000..000}.tar"))
    assert [it.concept for it in items] == ["c0", "c1", "c2", "c3"]
    assert next(_loader(items, batch_size=2)).tokens.shape == (2, 77)


def test_order_is_deterministic_disjoint_across_ranks_and_resumable() -> None:
    items = load_items("synthetic:40")
    a = epoch_batches(40, 4, seed=3, epoch=1, rank=0, world_size=2)
    b = epoch_batches(40, 4, seed=3, epoch=1, rank=1, world_size=2)
    assert a == epoch_batches(40, 4, seed=3, epoch=1, rank=0, world_size=2)
    assert not set(sum(a, [])) & set(sum(b, []))
    assert a != epoch_batches(40, 4, seed=3, epoch=2, rank=0, world_size=2)
    full = list(_loader(items, seed=3, epoch=1))
    resumed = list(_loader(items, seed=3, epoch=1, start_batch=4))
    assert len(resumed) == len(full) - 4
    for x, y in zip(full[4:], resumed):
        assert torch.equal(x.images, y.images) and torch.equal(x.tokens, y.tokens)


def test_concepts_are_spread_across_batches() -> None:
    concepts = [f"c{i % 10}" for i in range(100)]  # ten copies of ten concepts
    for batch in epoch_batches(100, 10, seed=0, epoch=0, concepts=concepts):
        assert len({concepts[i] for i in batch}) == 10


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_items(tmp_path / "none.csv")
    (tmp_path / "e.csv").write_text("image,caption\n")
    with pytest.raises(DataError, match="no image"):
        load_items(tmp_path / "e.csv")
    (tmp_path / "w.csv").write_text("path,text\na.png,x\n")
    with pytest.raises(DataError, match="needs columns"):
        load_items(tmp_path / "w.csv")
    with pytest.raises(DataError, match="larger than the data set"):
        epoch_batches(3, 4, seed=0, epoch=0)
