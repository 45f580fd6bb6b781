"""Several in-memory sources mixed by weight: per-epoch composition, per-source metrics, and
keeping another data set's held-out concepts out of training."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipforge.data import Item, load_items
from clipforge.data.mixture import concept_filter, mix_epoch, mixed_sources, shares
from clipforge.data.shard_sets import should_stream
from clipforge.errors import DataError
from clipforge.train import train
from clipforge.train.config import load_run_config


def _sources(weights=(0.75, 0.25)):
    return mixed_sources([("a", load_items("synthetic:40")), ("b", load_items("synthetic:10"))], weights)


def test_shares_follow_the_weights_and_add_up() -> None:
    sources = _sources()
    assert shares(sources, 50) == [38, 12] or shares(sources, 50) == [37, 13]
    assert sum(shares(sources, 7)) == 7
    assert shares(_sources((1.0, 0.0)), 9) == [9, 0]


def test_each_epoch_is_a_seeded_composition() -> None:
    sources = _sources()
    epoch0 = mix_epoch(sources, seed=0, epoch=0, size=100)
    assert [it.source for it in epoch0].count("a") == 75 and len(epoch0) == 100
    assert [it.key for it in epoch0] == [it.key for it in mix_epoch(sources, seed=0, epoch=0, size=100)]
    assert [it.key for it in epoch0] != [it.key for it in mix_epoch(sources, seed=0, epoch=1, size=100)]
    # b (10 items) gives 25 samples: every item twice before any third time
    counts = {}
    for it in epoch0:
        if it.source == "b":
            counts[it.key] = counts.get(it.key, 0) + 1
    assert len(counts) == 10 and set(counts.values()) <= {2, 3}


def test_bad_weights_and_empty_sources_are_clear_errors() -> None:
    with pytest.raises(DataError, match="one weight per source"):
        _sources((1.0,))
    with pytest.raises(DataError, match="not all zero"):
        _sources((0.0, 0.0))
    with pytest.raises(DataError, match="has no samples"):
        mixed_sources([("a", load_items("synthetic:4")), ("empty", [])], [1.0, 1.0])


def test_concept_filter_matches_concepts_and_whole_phrases_in_captions() -> None:
    names_one = concept_filter(["dog", "red apple"])
    item = lambda concept, caption: Item(lambda: None, (caption,), concept)  # noqa: E731
    assert names_one(item("dog", "x"))
    assert names_one(item("pet", "a Dog with a bone"))
    assert names_one(item(None, "clip art of a red apple"))
    assert not names_one(item("hotdog", "a hotdog stand"))  # a whole phrase, not a substring
    assert not names_one(item("apple", "a green apple"))


def test_weights_with_small_sources_stay_in_memory(tmp_path: Path) -> None:
    assert not should_stream("synthetic:8::synthetic:8", None, [0.5, 0.5], False)
    with pytest.raises(DataError, match="resampled needs streaming"):
        should_stream("synthetic:8", False, None, True)


def test_training_mixes_in_memory_sources_and_counts_them(tmp_path: Path) -> None:
    config = load_run_config(None, {"model": "tiny-vit", "data.train": "synthetic:96::synthetic:32",
                                    "data.train_weights": [0.25, 0.75], "data.style.grayscale": 0.5,
                                    "data.style.outline": 0.5, "train.batch_size": 16, "train.steps": 8,
                                    "train.log_every": 8, "out_dir": str(tmp_path / "run")})  # fmt: skip
    result = train(config)
    by_source = result.history[-1]["samples_by_source"]
    assert sum(by_source.values()) == 8 * 16
    assert by_source["synthetic:32"] > 2 * by_source["synthetic:96"]  # weights, not sizes, decide


def test_exclude_concepts_needs_a_built_data_set(tmp_path: Path) -> None:
    config = load_run_config(None, {"model": "tiny-vit", "data.train": "synthetic:32", "data.exclude_concepts": str(tmp_path),
                                    "train.batch_size": 8, "train.steps": 1, "out_dir": str(tmp_path / "run")})  # fmt: skip
    with pytest.raises(DataError, match="holds no built data set"):
        train(config)
