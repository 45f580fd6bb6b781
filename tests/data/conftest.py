"""Real files for the data tests: PNGs (some broken), a tokenizer stand-in, a transform."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image


def write_pngs(root: Path, n: int, prefix: str = "img") -> list[str]:
    """n small real PNGs, each a different colour, so decoded tensors tell them apart."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{prefix}{i}.png"
        Image.new("RGB", (40, 30), (i * 20 % 255, 100, (i * 53) % 255)).save(root / name)
        names.append(name)
    return names


def break_pngs(root: Path, good: str) -> dict[str, str]:
    """A zero-byte file and a truncated PNG beside the good ones; name -> why it is bad."""
    (root / "zero.png").write_bytes(b"")
    data = (root / good).read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    return {"zero.png": "UnidentifiedImageError", "truncated.png": "OSError"}


def char_tokenize(texts: list[str], context: int = 16) -> torch.Tensor:
    """Stand-in tokenizer: character codes, zero-padded; enough to check which caption went where."""
    out = torch.zeros(len(texts), context, dtype=torch.long)
    for i, text in enumerate(texts):
        codes = [ord(c) for c in text[:context]]
        out[i, : len(codes)] = torch.tensor(codes)
    return out


def detokenize(tokens: torch.Tensor) -> list[str]:
    return ["".join(chr(int(c)) for c in row if c) for row in tokens]


@pytest.fixture
def preprocess():
    from torchvision import transforms as T

    return T.Compose([T.Resize((16, 16)), T.Lambda(lambda im: im.convert("RGB")), T.ToTensor()])


@pytest.fixture
def pngs():
    return write_pngs


@pytest.fixture
def broken():
    return break_pngs


@pytest.fixture
def tok():
    return char_tokenize


@pytest.fixture
def detok():
    return detokenize
