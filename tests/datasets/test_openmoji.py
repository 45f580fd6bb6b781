from __future__ import annotations

from pathlib import Path

import pytest

from clipforge.data import load_items
from clipforge.datasets import build_dataset
from clipforge.datasets.openmoji import emoji_name
from clipforge.datasets.shards import split_of
from clipforge.errors import DataError


def test_names_concepts_and_flags() -> None:
    assert emoji_name("1F44B")[0] == "waving hand"
    concept, full, tone = emoji_name("1F44B-1F3FD")
    assert concept == "waving hand" and tone == "medium" and "medium skin tone" in full
    assert emoji_name("1F1EB-1F1F7")[0] == "flag of France"
    assert emoji_name("E000") is None


def test_build_is_split_by_concept_cached_and_readable(tmp_path: Path) -> None:
    manifest = build_dataset("openmoji", tmp_path / "om", image_size=32, limit=60, holdout_fraction=0.3)
    assert sum(manifest.counts.values()) > 40 and manifest.counts["heldout"] > 0
    assert not set(manifest.concepts["train"]) & set(manifest.concepts["heldout"])
    assert all(split_of(c, 0.3) == "heldout" for c in manifest.concepts["heldout"])
    assert manifest.licence == "CC BY-SA 4.0" and "OpenMoji" in manifest.attribution
    again = build_dataset("openmoji", tmp_path / "om", image_size=32, limit=60, holdout_fraction=0.3)
    assert again.shards == manifest.shards
    stamp = (tmp_path / "om" / "manifest.json").stat().st_mtime_ns
    build_dataset("openmoji", tmp_path / "om", image_size=32, limit=60, holdout_fraction=0.3)
    assert (tmp_path / "om" / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    items = load_items(tmp_path / "om")
    assert len(items) == manifest.counts["train"]
    image = items[0].open_image()
    assert image.size == (32, 32) and len(items[0].captions) == 4


def test_unknown_builder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data set"):
        build_dataset("imagenet", tmp_path)


def test_tuxpaint_builder(tmp_path: Path) -> None:
    from clipforge.datasets.clipart import TUXPAINT_DIR, stamp_concept

    assert stamp_concept("025quarter") == "quarter" and stamp_concept("polar_bear") == "polar bear"
    if not TUXPAINT_DIR.is_dir():  # scripts/test installs it; elsewhere the error says how
        with pytest.raises(DataError, match="apt-get install tuxpaint-stamps-default"):
            build_dataset("tuxpaint", tmp_path / "tp")
        return
    manifest = build_dataset("tuxpaint", tmp_path / "tp", image_size=32, limit=80, holdout_fraction=0.2)
    assert manifest.counts["train"] > 20
    assert not set(manifest.concepts["train"]) & set(manifest.concepts["heldout"])


def test_openclipart_builder_on_real_pngs(tmp_path: Path) -> None:
    from PIL import Image

    from clipforge.datasets.clipart import build_openclipart, openclipart_title

    assert openclipart_title("armadillo_architetto_fra_01") == "armadillo architetto fra"
    with pytest.raises(DataError, match="apt-get install openclipart-png"):
        build_openclipart(tmp_path / "none", root=tmp_path / "missing")
    root = tmp_path / "png"
    for topic, names in {"animals": ["cat_someone_01", "dog_someone_02", "fish_a_01"], "food": ["apple_b_01", "pear_c_01"]}.items():
        (root / topic).mkdir(parents=True)
        for i, name in enumerate(names):
            Image.new("RGBA", (30 + i, 20), (200, 30 * i, 40, 255)).save(root / topic / f"{name}.png")
    (root / "food" / "broken_x_01.png").write_bytes(b"not a png")
    manifest = build_openclipart(tmp_path / "oc", image_size=32, holdout_fraction=0.3, root=root)
    assert sum(manifest.counts.values()) == 5 and manifest.skipped == {"unreadable: UnidentifiedImageError": 1}
    assert not set(manifest.concepts["train"]) & set(manifest.concepts["heldout"])
