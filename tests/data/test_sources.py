"""Every source on real files: CSV/TSV, JSONL, a folder with sidecars, WebDataset shards
(brace patterns, a damaged shard), a built data set folder, synthetic; and the clear errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from clipforge.data import DataWarning, load_items, open_source
from clipforge.errors import DataError


def _shard(path: Path, samples: list[dict]) -> None:
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def _sample(key: str, png: bytes, captions: list[str], concept: str | None = None) -> dict:
    meta = {"captions": captions, **({"concept": concept} if concept else {})}
    return {"__key__": key, "png": png, "json": json.dumps(meta).encode()}


def test_csv_pools_repeated_rows_and_pipe_separated_captions(tmp_path: Path, pngs) -> None:
    names = pngs(tmp_path, 3)
    rows = [f"{names[0]},a red thing|a thing", f"{names[0]},another caption", f"{names[1]},one", f"{names[2]},",
            ",orphan"]
    (tmp_path / "d.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    source = open_source(tmp_path / "d.csv")
    assert [it.captions for it in source.items] == [("a red thing", "a thing", "another caption"), ("one",), ()]
    assert source.skipped == {"row without an image path": 1}
    assert source.items[0].open_image().size == (40, 30)


def test_tsv_with_custom_columns_and_quotes(tmp_path: Path, pngs) -> None:
    names = pngs(tmp_path / "imgs", 2)
    rows = "".join(f'imgs/{n}\t"quoted" caption {i}\tx\n' for i, n in enumerate(names))
    (tmp_path / "d.tsv").write_text("url\ttext\textra\n" + rows)
    items = load_items(tmp_path / "d.tsv", image_key="url", caption_key="text")
    assert [it.captions for it in items] == [('"quoted" caption 0',), ('"quoted" caption 1',)]
    assert items[1].open_image().size == (40, 30)


def test_jsonl_caption_and_captions(tmp_path: Path, pngs) -> None:
    names = pngs(tmp_path, 3)
    lines = [{"image": names[0], "captions": ["c0", "d0"]}, {"image": names[1], "caption": "c1|d1"},
             {"image": names[2], "caption": "c2"}, [1, 2]]  # fmt: skip
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    source = open_source(tmp_path / "d.jsonl")
    assert [it.captions for it in source.items] == [("c0", "d0"), ("c1", "d1"), ("c2",)]
    assert source.skipped == {"JSONL line is not an object": 1}
    with pytest.warns(DataWarning, match="1 × JSONL line is not an object"):
        load_items(tmp_path / "d.jsonl")


def test_folder_with_sidecar_captions(tmp_path: Path, pngs) -> None:
    pngs(tmp_path, 2)
    pngs(tmp_path / "sub", 1, prefix="deep")
    (tmp_path / "img0.txt").write_text("first caption\n\nsecond caption\n")
    (tmp_path / "sub" / "deep0.txt").write_text("nested\n")
    items = load_items(tmp_path)
    assert {it.key: it.captions for it in items} == {
        "img0.png": ("first caption", "second caption"), "img1.png": (), "sub/deep0.png": ("nested",),
    }  # fmt: skip


def test_webdataset_brace_patterns_and_multiple_patterns(tmp_path: Path, pngs) -> None:
    names = pngs(tmp_path, 6)
    for s in range(3):
        pngs_ = [(tmp_path / names[2 * s + i]).read_bytes() for i in range(2)]
        samples = [_sample(f"k{s}{i}", png, [f"t{s}{i}"], f"c{s}") for i, png in enumerate(pngs_)]
        _shard(tmp_path / f"shard-{s:03d}.tar", samples)
    items = load_items(str(tmp_path / "shard-{000..002}.tar"))
    assert [it.key for it in items] == ["k00", "k01", "k10", "k11", "k20", "k21"]
    assert [it.concept for it in items][::2] == ["c0", "c1", "c2"] and items[3].captions == ("t11",)
    joined = load_items(f"{tmp_path}/shard-000.tar::{tmp_path}/shard-{{001..002}}.tar")
    assert [it.key for it in joined] == [it.key for it in items]
    assert items[5].open_image().size == (40, 30)


def test_webdataset_txt_captions_and_missing_image(tmp_path: Path, pngs) -> None:
    png = (tmp_path / pngs(tmp_path, 1)[0]).read_bytes()
    _shard(tmp_path / "s.tar", [{"__key__": "a", "png": png, "txt": b"one\ntwo"}, {"__key__": "b", "txt": b"no image"}])
    source = open_source(tmp_path / "s.tar")
    assert [it.captions for it in source.items] == [("one", "two")]
    assert source.skipped == {"shard sample without an image (png/jpg/webp)": 1}


def test_damaged_shard_keeps_what_precedes_the_damage_and_counts_it(tmp_path: Path, pngs) -> None:
    names = pngs(tmp_path, 8)
    good = [_sample(f"k{i}", (tmp_path / n).read_bytes(), [f"t{i}"]) for i, n in enumerate(names)]
    _shard(tmp_path / "part-0.tar", good[:4])
    _shard(tmp_path / "part-1.tar", good[4:])
    data = (tmp_path / "part-1.tar").read_bytes()
    (tmp_path / "part-1.tar").write_bytes(data[: len(data) // 2 + 100])  # cut in the middle of a member
    source = open_source(str(tmp_path / "part-{0..1}.tar"))
    assert 4 <= len(source.items) < 8  # all of part-0 and the whole samples of part-1
    kept = len(source.items) - 4
    assert source.skipped[f"part-1.tar: truncated (no end-of-archive marker) after {kept} samples"] == 1
    with pytest.warns(DataWarning, match="part-1.tar: truncated"):
        load_items(str(tmp_path / "part-{0..1}.tar"))
    (tmp_path / "part-1.tar").write_bytes(b"this is not a tar file at all" * 40)
    source = open_source(str(tmp_path / "part-{0..1}.tar"))
    assert len(source.items) == 4
    assert any(r.startswith("part-1.tar: unreadable after 0 samples") for r in source.skipped)


def test_webdataset_under_torchrun_environment(tmp_path: Path, pngs, monkeypatch) -> None:
    """webdataset refuses multi-node reading by default; every rank must still read all shards."""
    png = (tmp_path / pngs(tmp_path, 1)[0]).read_bytes()
    _shard(tmp_path / "s.tar", [_sample("a", png, ["x"])])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert len(load_items(tmp_path / "s.tar")) == 1


def test_synthetic_is_deterministic_and_items_pickle(tmp_path: Path, pngs) -> None:
    a, b = load_items("synthetic:20"), load_items("synthetic:20")
    assert [it.captions for it in a] == [it.captions for it in b]
    assert a[3].open_image().tobytes() == b[3].open_image().tobytes()
    assert a[0].captions[0] in (f"a {a[0].concept}",) and a[0].concept.split()[0] in ("red", "green", "blue", "yellow")
    # Items travel to DataLoader workers started with spawn: every opener must pickle.
    names = pngs(tmp_path, 1)
    (tmp_path / "d.csv").write_text(f"image,caption\n{names[0]},x\n")
    for item in (a[0], load_items(tmp_path / "d.csv")[0]):
        assert pickle.loads(pickle.dumps(item)).open_image().size == item.open_image().size


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_items(tmp_path / "none.csv")
    with pytest.raises(DataError, match="shard .*none-001.tar does not exist"):
        load_items(str(tmp_path / "none-{001..002}.tar"))
    (tmp_path / "e.csv").write_text("image,caption\n")
    with pytest.raises(DataError, match="no image–caption samples"):
        load_items(tmp_path / "e.csv")
    (tmp_path / "w.csv").write_text("path,text\na.png,x\n")
    with pytest.raises(DataError, match="needs columns 'image' and 'caption'"):
        load_items(tmp_path / "w.csv")
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        load_items(tmp_path / "bad.jsonl")
    (tmp_path / "d.parquet").write_bytes(b"x")
    with pytest.raises(DataError, match="unknown data format"):
        load_items(tmp_path / "d.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image–caption samples"):
        load_items(tmp_path / "empty")
    with pytest.raises(DataError, match="synthetic:N"):
        load_items("synthetic:zero")
