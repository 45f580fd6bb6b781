"""The build machinery on its own: atomic replacement, refusing to clobber a folder, render
failures counted, unique keys, concurrent builders taking turns."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from clipforge.datasets.manifest import Manifest
from clipforge.datasets.shards import Job, Plan, build_cached
from clipforge.errors import DataError

PARAMS = {"image_size": 16, "holdout_fraction": 0.0, "val_fraction": 0.0, "builder_version": 1}


def _render(path: str, size: int) -> Image.Image:
    if Path(path).name == "interrupt.png":
        raise KeyboardInterrupt  # as Ctrl-C in the middle of a build
    image = Image.open(path)
    image.load()
    return image.convert("RGB").resize((size, size))


def _plan(root: Path, names: list[str]) -> Plan:
    root.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, name in enumerate(names):
        path = root / name
        if not path.exists() and name.endswith(".png") and "broken" not in name:
            Image.new("RGB", (20, 20), (i * 30 % 255, 0, 0)).save(path)
        jobs.append(Job(Path(name).stem, str(path), (f"caption {i}",), f"concept {i % 3}"))
    (root / "broken.png").write_bytes(b"not an image")
    manifest = Manifest(name="test", source="test", licence="none", attribution="none", params={})
    return Plan(manifest, jobs, _render, Counter({"planned out": 2}))


def test_render_failures_are_counted_and_keys_made_unique(tmp_path: Path) -> None:
    names = ["a.png", "b.png", "broken.png", "v1.2.png"]
    plan = _plan(tmp_path / "src", names)
    plan.jobs.append(plan.jobs[0])  # the same key twice must not merge two samples
    manifest = build_cached(tmp_path / "out", PARAMS, lambda: plan, force=False, workers=1)
    assert manifest.counts == {"train": 4, "val": 0, "heldout": 0} and manifest.shards["val"] == []
    assert manifest.skipped == {"planned out": 2, "render failed: UnidentifiedImageError": 1}
    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset(manifest.shard_paths("train"), shardshuffle=False, empty_check=False)]
    assert keys == ["a", "b", "v1_2", "a_2"]


def test_an_interrupted_build_leaves_the_old_one_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = build_cached(out, PARAMS, lambda: _plan(tmp_path / "src", ["a.png", "b.png"]), force=False, workers=1)
    with pytest.raises(KeyboardInterrupt):
        build_cached(out, PARAMS, lambda: _plan(tmp_path / "src", ["a.png", "interrupt.png"]), force=True, workers=1)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train-00000.tar"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.building")] == []  # temp removed
    again = build_cached(out, PARAMS, lambda: pytest.fail("a whole build must be reused"), force=False, workers=1)
    assert again.counts == first.counts


def test_refuses_to_replace_a_folder_that_is_not_a_data_set(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not empty and holds no clipforge data set"):
        build_cached(out, PARAMS, lambda: _plan(tmp_path / "src", ["a.png"]), force=True, workers=1)
    assert (out / "thesis.tex").read_text() == "precious"


def test_nothing_rendered_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="produced no images"):
        build_cached(tmp_path / "out", PARAMS, lambda: _plan(tmp_path / "src", ["broken.png"]), force=False, workers=1)
    assert not (tmp_path / "out").exists()


def test_concurrent_builders_of_one_folder_build_once(tmp_path: Path) -> None:
    plans: list[int] = []

    def make_plan() -> Plan:
        plans.append(1)
        return _plan(tmp_path / "src", ["a.png", "b.png", "c.png"])

    results: list[Manifest] = []
    threads = [threading.Thread(target=lambda: results.append(
        build_cached(tmp_path / "out", PARAMS, make_plan, force=False, workers=1))) for _ in range(3)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(plans) == 1 and len(results) == 3 and all(r.counts == results[0].counts for r in results)
