"""The training loader: bad samples replaced and counted, deterministic order, disjoint ranks,
resume without decoding, caption sampling, DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipforge.data import Item, SkipCounter, batches_per_epoch, epoch_batches, load_items, make_loader
from clipforge.errors import DataError


def _csv(root: Path, rows: list[str]) -> Path:
    (root / "d.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return root / "d.csv"


def test_bad_images_and_empty_captions_are_replaced_and_counted(tmp_path: Path, pngs, broken, preprocess, tok) -> None:
    names = pngs(tmp_path, 8)
    bad = broken(tmp_path, names[0])
    rows = [f"{n},picture {i}" for i, n in enumerate(names)]
    rows += [f"{n},broken" for n in bad] + ["missing.png,not there", f"{names[1]},", "uncaptioned.png,"]
    pngs(tmp_path, 1, prefix="uncaptioned")
    (tmp_path / "uncaptioned0.png").rename(tmp_path / "uncaptioned.png")
    items = load_items(_csv(tmp_path, rows))
    assert len(items) == 12
    counter = SkipCounter()
    batches = list(make_loader(items, preprocess, tok, 4, seed=1))
    assert len(batches) == 3 and all(b.images.shape == (4, 3, 16, 16) for b in batches)
    for batch in batches:
        counter.update(batch)
    keys = {s.key: s.reason for b in batches for s in b.skipped}
    assert keys == {"zero.png": "UnidentifiedImageError", "truncated.png": "OSError",
                    "missing.png": "FileNotFoundError", "uncaptioned.png": "no caption"}  # fmt: skip
    assert counter.total >= 4 and set(counter.as_dict()) == set(keys.values())
    assert "FileNotFoundError (e.g. missing.png)" in str(counter)


def test_a_mostly_broken_data_set_is_a_clear_error(tmp_path: Path, preprocess, tok) -> None:
    items = load_items(_csv(tmp_path, [f"missing{i}.png,x" for i in range(8)]))
    with pytest.raises(DataError, match="64 samples in a row could not be used .*missing"):
        next(iter(make_loader(items, preprocess, tok, 2)))


def test_ranks_are_disjoint_and_together_make_the_single_process_batch() -> None:
    single = epoch_batches(100, 8, seed=3, epoch=1)
    ranks = [epoch_batches(100, 4, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 12 == batches_per_epoch(100, 4, 2)
    assert not set(sum(ranks[0], [])) & set(sum(ranks[1], []))
    for whole, a, b in zip(single, *ranks, strict=True):
        assert whole == a + b
    assert single == epoch_batches(100, 8, seed=3, epoch=1)
    assert single != epoch_batches(100, 8, seed=3, epoch=2) and single != epoch_batches(100, 8, seed=4, epoch=1)


def test_drop_last_false_covers_every_sample_with_equal_rank_batches() -> None:
    ranks = [epoch_batches(23, 4, seed=0, epoch=0, rank=r, world_size=2, drop_last=False) for r in range(2)]
    assert len(ranks[0]) == 3 == batches_per_epoch(23, 4, 2, drop_last=False)
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [4, 4, 4]  # padded: ranks stay in step
    assert set(sum(ranks[0] + ranks[1], [])) == set(range(23))


def test_loader_is_deterministic_and_workers_do_not_change_it(preprocess, tok) -> None:
    from clipforge.transforms import image_transform

    items = load_items("synthetic:24")
    augment = image_transform(16, train=True)  # random crops: seeded per sample, not per worker
    runs = [list(make_loader(items, augment, tok, 4, seed=5, epoch=2, workers=w)) for w in (0, 0, 2)]
    for other in runs[1:]:
        for x, y in zip(runs[0], other, strict=True):
            assert torch.equal(x.images, y.images) and torch.equal(x.tokens, y.tokens)
    next_epoch = next(iter(make_loader(items, augment, tok, 4, seed=5, epoch=3)))
    assert not torch.equal(next_epoch.images, runs[0][0].images)
    images, tokens = runs[0][0]  # a batch unpacks as (images, tokens)
    assert images.shape == (4, 3, 16, 16) and tokens.dtype == torch.long


def test_resume_skips_batches_without_decoding_them(preprocess, tok) -> None:
    opened: list[int] = []

    def opener(i: int):
        def open_image():
            opened.append(i)
            return load_items("synthetic:1")[0].open_image()

        return open_image

    items = [Item(opener(i), (f"caption {i}",), key=str(i)) for i in range(30)]
    full = list(make_loader(items, preprocess, tok, 5, seed=7, epoch=1))
    opened.clear()
    resumed = list(make_loader(items, preprocess, tok, 5, seed=7, epoch=1, start_batch=4))
    assert len(opened) == 2 * 5  # only batches 4 and 5 were decoded
    assert [torch.equal(a.tokens, b.tokens) for a, b in zip(full[4:], resumed, strict=True)] == [True, True]
    assert list(make_loader(items, preprocess, tok, 5, seed=7, epoch=1, start_batch=6)) == []
    with pytest.raises(DataError, match="start_batch 7 is outside"):
        make_loader(items, preprocess, tok, 5, seed=7, epoch=1, start_batch=7)


def test_one_caption_per_image_sampled_by_seed_epoch_and_index(pngs, tmp_path: Path, preprocess, tok, detok) -> None:
    names = pngs(tmp_path, 4)
    rows = [f"{n},{n[:4]} {i} a|{n[:4]} {i} b|{n[:4]} {i} c" for i, n in enumerate(names)]
    items = load_items(_csv(tmp_path, rows))

    def captions(seed: int, epoch: int) -> list[str]:
        return [c for b in make_loader(items, preprocess, tok, 4, seed=seed, epoch=epoch) for c in detok(b.tokens)]

    assert captions(0, 0) == captions(0, 0)
    per_epoch = [sorted(captions(0, e)) for e in range(40)]
    assert all(len({c[:-2] for c in caps}) == 4 for caps in per_epoch)  # each image once, one caption each
    seen = {c for caps in per_epoch for c in caps}
    assert len(seen) == 12  # over epochs every caption of every image is used


def test_source_string_and_clear_errors(preprocess, tok) -> None:
    assert len(list(make_loader("synthetic:10", preprocess, tok, 3))) == 3
    with pytest.raises(DataError, match="larger than the data set"):
        make_loader("synthetic:10", preprocess, tok, 6, world_size=2)
    with pytest.raises(DataError, match="bad batching"):
        epoch_batches(10, 2, seed=0, epoch=0, rank=2, world_size=2)


def test_concepts_are_spread_across_batches() -> None:
    concepts = [f"c{i % 10}" for i in range(100)]  # ten copies of ten concepts
    for batch in epoch_batches(100, 10, seed=0, epoch=0, concepts=concepts):
        assert len({concepts[i] for i in batch}) == 10
