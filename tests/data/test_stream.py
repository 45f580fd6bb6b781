"""The streaming loader on real shards: disjoint across ranks and workers, exact resume from a
mid-epoch position, mixing by weight, resampling, damage counted."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
import torch

from clipforge.data.shard_sets import STREAM_ABOVE_BYTES, known_size, shard_sets, should_stream
from clipforge.data.stream import StreamSpec, advance_position, make_stream_loader
from clipforge.errors import DataError


def tokenize(texts: list[str]) -> torch.Tensor:
    """Character codes: a batch's captions can be read back."""
    out = torch.zeros(len(texts), 24, dtype=torch.long)
    for i, text in enumerate(texts):
        out[i, : min(24, len(text))] = torch.tensor([ord(c) for c in text[:24]])
    return out


def _spec(pattern: str, *, weights=None, **kw) -> StreamSpec:
    return StreamSpec(tuple(shard_sets(pattern, weights)), **{"batch_size": 4, **kw})


def _run(spec: StreamSpec, preprocess, position=None, take: int | None = None):
    """(batches as (keys, image digest), the position after them, all skipped)."""
    out, skipped = [], []
    for batch in make_stream_loader(spec, preprocess, tokenize, position=position):
        position = advance_position(position, batch, spec.streams)
        skipped += batch.skipped
        if batch.size:
            out.append((tuple(batch.keys), hashlib.sha256(batch.images.numpy().tobytes()).hexdigest()))
            assert _detok(batch.tokens) == [f"caption of {k}"[:24] for k in batch.keys]
        if take is not None and len(out) == take:
            break
    return out, position, skipped


def _detok(tokens: torch.Tensor) -> list[str]:
    return ["".join(chr(int(c)) for c in row if c) for row in tokens]


def test_every_sample_once_across_ranks_and_workers(tmp_path: Path, make_shards, preprocess) -> None:
    pattern = make_shards(tmp_path, shards=8, per_shard=6)
    seen = []
    for rank in range(2):
        batches, _, skipped = _run(_spec(pattern, rank=rank, world_size=2, workers=2, batch_size=3, shuffle_buffer=4),
                                   preprocess)  # fmt: skip
        seen += [k for keys, _ in batches for k in keys]
        assert not skipped
    assert sorted(seen) == sorted(f"s{s}-{i}" for s in range(8) for i in range(6))


def test_resume_mid_epoch_gives_the_rest_exactly(tmp_path: Path, make_shards, preprocess) -> None:
    a = make_shards(tmp_path / "a", shards=5, per_shard=7, prefix="a")
    b = make_shards(tmp_path / "b", shards=3, per_shard=5, prefix="b")
    spec = _spec(f"{a}::{b}", weights=[0.6, 0.4], workers=2, shuffle_buffer=6, seed=3, epoch=1)
    whole, _, _ = _run(spec, preprocess)
    assert len(whole) >= 8
    for cut in (1, 3, len(whole) - 1):
        head, position, _ = _run(spec, preprocess, take=cut)
        rest, _, _ = _run(spec, preprocess, position=position)
        assert head + rest == whole, cut
    assert len({k for keys, _ in whole for k in keys}) == sum(len(keys) for keys, _ in whole)  # no repeats
    other_epoch, _, _ = _run(_spec(f"{a}::{b}", weights=[0.6, 0.4], workers=2, shuffle_buffer=6, seed=3, epoch=2), preprocess)
    assert other_epoch != whole


def test_order_is_independent_of_timing_and_buffer_bounds_memory(tmp_path: Path, make_shards, preprocess) -> None:
    pattern = make_shards(tmp_path, shards=4, per_shard=10)
    spec = _spec(pattern, workers=2, shuffle_buffer=3)
    first, _, _ = _run(spec, preprocess)
    assert _run(spec, preprocess)[0] == first
    in_process = _spec(pattern, workers=0, shuffle_buffer=3)
    assert len(_run(in_process, preprocess)[0]) == 10  # 40 samples / 4 (one stream: no tail lost)


def test_resampled_epoch_has_its_length_and_mixes_by_weight(tmp_path: Path, make_shards, preprocess) -> None:
    a = make_shards(tmp_path / "a", shards=2, per_shard=8, prefix="a")
    b = make_shards(tmp_path / "b", shards=2, per_shard=8, prefix="b")
    spec = _spec(f"{a}::{b}", weights=[0.8, 0.2], resampled=True, batches_per_epoch=30, workers=2, shuffle_buffer=8)
    batches, _, _ = _run(spec, preprocess)
    assert len(batches) == 30
    by_source = Counter(k[0] for keys, _ in batches for k in keys)
    share = by_source["a"] / sum(by_source.values())
    assert 0.7 < share < 0.9, by_source  # 120 draws at p=0.8: 0.7..0.9 is beyond 2.5 standard deviations
    assert max(Counter(k for keys, _ in batches for k in keys).values()) > 1  # drawn with replacement


def test_damaged_input_is_counted_and_the_stream_goes_on(tmp_path: Path, make_shards, preprocess) -> None:
    import json

    import webdataset as wds

    pattern = make_shards(tmp_path, shards=3, per_shard=6)
    with wds.TarWriter(str(tmp_path / "s-003.tar")) as sink:  # an undecodable image, an empty caption, no image
        sink.write({"__key__": "bad-image", "png": b"not a png", "json": json.dumps({"caption": "x"}).encode()})
        sink.write({"__key__": "no-caption", "png": (tmp_path / "s-000.tar").read_bytes()[:10], "txt": b"  "})
        sink.write({"__key__": "no-image", "txt": b"a caption"})
    whole = (tmp_path / "s-001.tar").read_bytes()
    (tmp_path / "s-001.tar").write_bytes(whole[: len(whole) // 2])  # truncated
    (tmp_path / "s-002.tar").write_bytes(b"\x00garbage" * 300)  # not a tar
    spec = _spec(str(tmp_path / "s-{000..004}.tar"), shuffle_buffer=2, batch_size=2)  # s-004 is missing
    batches, _, skipped = _run(spec, preprocess)
    reasons = Counter(s.reason for s in skipped)
    assert reasons["missing shard"] == 1 and reasons["no caption"] == 1 and reasons["no image"] == 1
    assert reasons["UnidentifiedImageError"] == 1
    assert sum(n for r, n in reasons.items() if "shard" in r and r != "missing shard") >= 2, reasons
    assert sum(len(keys) for keys, _ in batches) >= 6  # the whole shard s-000 at least


def test_shard_lists_that_match_nothing_are_an_error_before_training(tmp_path: Path, make_shards) -> None:
    with pytest.raises(DataError, match="matches no existing shard"):
        shard_sets(str(tmp_path / "none-{000..009}.tar"))
    pattern = make_shards(tmp_path, shards=2, per_shard=2)
    with pytest.raises(DataError, match="one weight per source"):
        shard_sets(f"{pattern}::{pattern}", [1.0])
    assert known_size(shard_sets(pattern)) == 4


def test_stream_or_memory_is_chosen_by_size(tmp_path: Path, make_shards) -> None:
    pattern = make_shards(tmp_path, shards=2, per_shard=2)
    assert not should_stream(pattern, None, None, False)  # small shards: in memory
    assert not should_stream(pattern, None, [1.0], False)  # weights alone: mixed in memory (data/mixture.py)
    assert should_stream(pattern, None, None, True)  # resampling draws shards: streaming only
    assert should_stream(pattern, True, None, False)
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "x.tar", "wb") as f:  # sparse: no disk used
        f.truncate(STREAM_ABOVE_BYTES + 1)
    assert should_stream(str(big), None, None, False)
    with pytest.raises(DataError, match="not shards"):
        should_stream("synthetic:8", True, None, False)
