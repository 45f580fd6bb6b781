"""The optional clip-art builders. Their naming rules and the missing-package error always run;
the builds from the real Debian packages run where they are installed (scripts/test installs
tuxpaint-stamps-default) and say why they are skipped elsewhere."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from clipforge.datasets import build_dataset
from clipforge.datasets.clipart import (OPENCLIPART_DIR, TUXPAINT_DIR, build_openclipart, build_tuxpaint,
                                        description_concept, openclipart_title, stamp_concept)  # fmt: skip
from clipforge.errors import DataError


def test_naming_rules() -> None:
    assert stamp_concept("025quarter") == "quarter" and stamp_concept("polar_bear") == "polar bear"
    assert stamp_concept("dinosaurSings") == "dinosaur sings" and stamp_concept("balloon360") == "balloon"
    assert description_concept("A tanker truck.") == "tanker truck"
    assert description_concept("A US 25 cent piece ($.25) called a quarter.") is None  # a sentence
    assert description_concept("A European coin of 1 cent (0.01 €).", max_words=8) == "european coin of 1 cent"
    assert openclipart_title("armadillo_architetto_fra_01") == "armadillo architetto fra"


def test_missing_packages_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install tuxpaint-stamps-default"):
        build_tuxpaint(tmp_path / "tp", root=tmp_path / "missing")
    with pytest.raises(DataError, match="apt-get install openclipart-png"):
        build_openclipart(tmp_path / "oc", root=tmp_path / "missing")
    assert not (tmp_path / "tp").exists()


def test_openclipart_layout_on_real_pngs(tmp_path: Path) -> None:
    """Openclipart's folder layout and file naming, on PNGs written here (transparent, odd sizes)."""
    root = tmp_path / "png"
    layout = {"animals": ["cat_someone_01", "dog_someone_02", "fish_a_01"], "food": ["apple_b_01", "pear_c_01"]}
    for topic, names in layout.items():
        (root / topic).mkdir(parents=True)
        for i, name in enumerate(names):
            Image.new("RGBA", (30 + i, 20), (200, 30 * i, 40, 255)).save(root / topic / f"{name}.png")
    (root / "food" / "broken_x_01.png").write_bytes(b"not a png")
    Image.new("RGBA", (10, 40), (0, 0, 0, 0)).save(root / "food" / "clear_y_01.png")  # all transparent
    manifest = build_openclipart(tmp_path / "oc", image_size=32, holdout_fraction=0.3, root=root)
    assert sum(manifest.counts.values()) == 6 and manifest.skipped == {"render failed: UnidentifiedImageError": 1}
    assert not set(manifest.concepts["train"]) & set(manifest.concepts["heldout"])
    import webdataset as wds

    shards = [path for split in manifest.shards for path in manifest.shard_paths(split)]
    samples = {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)}
    clear = samples["food/clear_y_01"]
    assert Image.open(io.BytesIO(clear["png"])).getcolors() == [(32 * 32, (255, 255, 255))]  # transparent -> white
    meta = json.loads(samples["animals/cat_someone_01"]["json"])
    assert meta["concept"] == "cat someone" and meta["topic"] == "animals" and meta["source"] == "openclipart"


@pytest.mark.skipif(not TUXPAINT_DIR.is_dir(),
                    reason="Tux Paint stamps not installed: apt-get install tuxpaint-stamps-default")
def test_tuxpaint_from_the_debian_package(tmp_path: Path) -> None:
    manifest = build_dataset("tuxpaint", tmp_path / "tp", image_size=32, limit=60, holdout_fraction=0.2)
    assert sum(manifest.counts.values()) >= 55 and manifest.licence.startswith("GPL")
    assert not set(manifest.concepts["train"]) & set(manifest.concepts["heldout"])
    import webdataset as wds

    train = wds.WebDataset(manifest.shard_paths("train"), shardshuffle=False, empty_check=False)
    metas = [json.loads(s["json"]) for s in train]
    described = [m for m in metas if m["description"]]
    assert len(described) > len(metas) * 0.8 and all(m["captions"][0] == m["description"] for m in described)


@pytest.mark.skipif(not OPENCLIPART_DIR.is_dir(), reason="Openclipart not installed: apt-get install openclipart-png")
def test_openclipart_from_the_debian_package(tmp_path: Path) -> None:
    manifest = build_dataset("openclipart", tmp_path / "oc", image_size=32, limit=40)
    assert sum(manifest.counts.values()) + sum(manifest.skipped.values()) >= 40
    assert sum(manifest.counts.values()) >= 35
