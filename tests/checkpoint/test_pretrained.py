from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge.checkpoint.pretrained import OPENAI_NAMES, OPENAI_WEIGHTS, PretrainedWeights, fetch, resolve_pretrained
from clipforge.errors import CheckpointError, OfflineError
from clipforge.registry import MODEL_CONFIGS


def test_every_openai_name_points_to_a_quickgelu_architecture() -> None:
    assert len(OPENAI_WEIGHTS) == 9
    for name in OPENAI_NAMES:
        weights = resolve_pretrained(name, None)
        assert weights is not None and weights.architecture in MODEL_CONFIGS
        assert weights.architecture.endswith("-quickgelu")
        assert weights.sha256 in weights.url and len(weights.sha256) == 64
    assert resolve_pretrained("ViT-B-32", "openai") is OPENAI_WEIGHTS["ViT-B-32"]
    assert resolve_pretrained("ViT-B-32", None) is None  # a registry name alone is not pretrained


def test_offline_error_says_which_file_to_place_where(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path))
    with pytest.raises(OfflineError) as err:
        clipforge.load("ViT-B/32", download=False)
    message = str(err.value)
    assert str(tmp_path / "ViT-B-32.pt") in message
    assert OPENAI_WEIGHTS["ViT-B-32"].sha256 in message


def test_failed_download_is_an_offline_error_and_leaves_no_partial(tmp_path: Path) -> None:
    weights = PretrainedWeights("tiny-vit", "http://127.0.0.1:9/clip/models/abc/tiny.pt", "0" * 64)
    with pytest.raises(OfflineError, match="download failed"):
        fetch(weights, cache=tmp_path, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_cached_file_with_matching_checksum_loads(tmp_path: Path) -> None:
    model = clipforge.create_model("tiny-vit-quickgelu", seed=0)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    weights = PretrainedWeights("tiny-vit-quickgelu", f"http://127.0.0.1:9/{sha}/tiny.pt", sha)
    assert fetch(weights, cache=tmp_path, download=False) == path
    bad = PretrainedWeights("tiny-vit-quickgelu", "http://127.0.0.1:9/x/tiny.pt", "f" * 64)
    with pytest.raises(CheckpointError, match="SHA-256"):
        fetch(bad, cache=tmp_path, download=False)
