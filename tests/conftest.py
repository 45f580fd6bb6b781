"""Shared fixtures: tiny real models and real inputs."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

# Two cores: keep each test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_vit():
    from clipforge.factory import create_model

    return create_model("tiny-vit", seed=0)


@pytest.fixture(scope="session")
def tiny_rn():
    from clipforge.factory import create_model

    return create_model("tiny-rn", seed=0)


@pytest.fixture
def make_tokens():
    """Factory of token-id batches shaped like the tokenizer's output."""
    return random_tokens


def random_tokens(batch: int, lengths: list[int] | None = None, seed: int = 0, context: int = 77):
    """Token ids shaped like the tokenizer's output: SOT, words, EOT, zero padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [int(n) for n in torch.randint(1, context - 1, (batch,), generator=g)]
    tokens = torch.zeros(batch, context, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, 0] = 49406
        tokens[i, 1 : n + 1] = torch.randint(0, 49406, (n,), generator=g)
        tokens[i, n + 1] = 49407
    return tokens


@pytest.fixture
def make_shards():
    """Factory of real WebDataset shards: ``make_shards(root, shards, per_shard, prefix)`` -> pattern."""
    return write_shards


def png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), (i * 37 % 255, (i * 11) % 255, (i * 53) % 255)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(root: Path, shards: int, per_shard: int, prefix: str = "s", sizes: bool = True) -> str:
    """``shards`` tars of ``per_shard`` captioned PNGs; returns their brace pattern. Keys are
    ``{prefix}{shard}-{i}`` and the caption names the key, so a batch tells what it holds."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    counts = {}
    for s in range(shards):
        name = f"{prefix}-{s:03d}.tar"
        with wds.TarWriter(str(root / name)) as sink:
            for i in range(per_shard):
                key = f"{prefix}{s}-{i}"
                sink.write({"__key__": key, "png": png_bytes(s * 1000 + i),
                            "json": json.dumps({"captions": [f"caption of {key}"]}).encode()})
        counts[name] = per_shard
    if sizes:
        (root / "sizes.json").write_text(json.dumps(counts))
    return str(root / f"{prefix}-{{000..{shards - 1:03d}}}.tar")
