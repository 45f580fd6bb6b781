"""OpenMoji for real: names from the emoji package, rendering, concept-level splits, manifest,
cache reuse, and reading the result back with the training loader."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from clipforge.data import load_items, open_source
from clipforge.datasets import SPLITS, build_dataset, class_names, read_manifest, split_of
from clipforge.datasets.openmoji import captions_for, emoji_name
from clipforge.errors import DataError


def _samples(manifest, split: str) -> list[dict]:
    import webdataset as wds

    return list(wds.WebDataset(manifest.shard_paths(split), shardshuffle=False, empty_check=False))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """40 emoji spread over the whole set, 32 px, a large held-out fraction so every split has some."""
    out = tmp_path_factory.mktemp("om") / "openmoji"
    return build_dataset("openmoji", out, image_size=32, limit=40, holdout_fraction=0.3, val_fraction=0.2)


def test_names_concepts_tones_and_flags() -> None:
    assert emoji_name("1F44B") == ("waving hand", "waving hand", None)
    assert emoji_name("1F44B-1F3FD") == ("waving hand", "waving hand, medium skin tone", "medium")
    assert emoji_name("1F6B6-200D-27A1-FE0F").full == "person walking facing right"
    two = emoji_name("1F9D1-1F3FF-200D-1F91D-200D-1F9D1-1F3FB")
    assert two.concept == "people holding hands" and two.full.endswith("dark, light skin tone")
    assert emoji_name("1F1EB-1F1F7").concept == "flag of France"
    assert emoji_name("2654").concept == "white chess king"  # not an emoji: the Unicode name
    assert emoji_name("E000") is None and emoji_name("not-hex") is None
    caps = captions_for("waving hand, medium skin tone", "1F44B-1F3FD")
    assert len(set(caps)) == 4 and all("waving hand, medium skin tone" in c for c in caps)
    assert caps == captions_for("waving hand, medium skin tone", "1F44B-1F3FD")  # per file, not per build


def test_build_counts_manifest_and_licence(built) -> None:
    assert sum(built.counts.values()) == 40 and all(built.counts[s] > 0 for s in SPLITS)
    assert built.licence == "CC BY-SA 4.0" and "OpenMoji" in built.attribution
    assert built.image_size == 32 and built.builder_version >= 3 and built.params["limit"] == 40
    # OpenMoji's extra glyphs have no Unicode name: skipped, and counted
    assert built.skipped["no name: OpenMoji extra glyph (private use area)"] > 300
    on_disk = json.loads((Path(built.root) / "manifest.json").read_text())
    assert on_disk["counts"] == built.counts and on_disk["skipped"] == built.skipped
    assert read_manifest(built.root).shards == built.shards


def test_splits_are_by_concept_and_never_share_one(built) -> None:
    concepts = {s: set(built.concepts[s]) for s in SPLITS}
    assert not concepts["train"] & concepts["heldout"] and not concepts["train"] & concepts["val"]
    assert not concepts["val"] & concepts["heldout"]
    for split in SPLITS:
        assert all(split_of(c, 0.3, 0.2) == split for c in concepts[split])
        assert class_names(built, split) == sorted(concepts[split])
    # the same concept lands on the same side whatever is built: the hash is of its name alone
    assert split_of("waving hand", 0.3, 0.2) == split_of("waving hand", 0.3, 0.2)


def test_samples_are_white_backed_rgb_with_varied_captions(built) -> None:
    samples = _samples(built, "train")
    assert len(samples) == built.counts["train"]
    for sample in samples:
        image = Image.open(io.BytesIO(sample["png"]))
        meta = json.loads(sample["json"])
        assert image.mode == "RGB" and image.size == (32, 32)
        assert meta["source"] == "openmoji" and meta["split"] == "train" and meta["concept"] in built.concepts["train"]
        assert len(set(meta["captions"])) == 4 and all(meta["name"] in c for c in meta["captions"])
        if meta["skin_tone"]:
            assert "skin tone" in meta["name"] and "skin tone" not in meta["concept"]
    corners = [Image.open(io.BytesIO(s["png"])).getpixel((0, 0)) for s in samples]
    assert corners.count((255, 255, 255)) > len(corners) * 0.8  # drawn on white, not black


def test_training_loader_reads_each_split(built) -> None:
    assert open_source(built.root).skipped == {}  # whole shards, nothing left out
    assert len(load_items(built.root)) == built.counts["train"]
    heldout = load_items(built.root, split="heldout")
    assert len(heldout) == built.counts["heldout"] and {it.concept for it in heldout} == set(built.concepts["heldout"])
    assert heldout[0].open_image().size == (32, 32)


def test_second_build_is_reused_and_force_rebuilds(built) -> None:
    root = Path(built.root)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    again = build_dataset("openmoji", root, image_size=32, limit=40, holdout_fraction=0.3, val_fraction=0.2)
    assert again.shards == built.shards and (root / "manifest.json").stat().st_mtime_ns == stamp  # reused
    kw = {"image_size": 32, "limit": 40, "holdout_fraction": 0.3, "val_fraction": 0.2}
    forced = build_dataset("openmoji", root, force=True, **kw)
    assert (root / "manifest.json").stat().st_mtime_ns != stamp and forced.counts == built.counts
    # a shard that went missing or was cut short makes the cached build stale
    shard = root / built.shards["train"][0]
    shard.write_bytes(shard.read_bytes()[:1000])
    repaired = build_dataset("openmoji", root, image_size=32, limit=40, holdout_fraction=0.3, val_fraction=0.2)
    assert shard.stat().st_size == repaired.shard_bytes[shard.name] > 1000


def test_build_is_reproducible_across_process_counts(tmp_path: Path) -> None:
    """70 images: enough to start the process pool; the shards must equal the serial build's."""
    kw = {"image_size": 24, "limit": 70, "holdout_fraction": 0.2}
    serial = build_dataset("openmoji", tmp_path / "serial", workers=1, **kw)
    pooled = build_dataset("openmoji", tmp_path / "pooled", workers=2, **kw)
    assert serial.shards == pooled.shards and serial.counts == pooled.counts
    for name in serial.shard_bytes:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "pooled" / name).read_bytes()


def test_bad_parameters_and_unknown_name_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        build_dataset("imagenet", tmp_path)
    with pytest.raises(DataError, match="holdout_fraction"):
        build_dataset("openmoji", tmp_path / "x", holdout_fraction=0.7, val_fraction=0.4)
    with pytest.raises(DataError, match="limit"):
        build_dataset("openmoji", tmp_path / "x", limit=0)
    assert not (tmp_path / "x").exists()
