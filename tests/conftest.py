"""Shared fixtures: tiny real models and real inputs."""

from __future__ import annotations

import os

import pytest
import torch

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
