"""`hf-hub:` and `local-dir:` repositories and open_clip's pretrained tags, without the network:
real repositories written by open_clip from its own (random) models, placed on disk and in a
Hugging Face cache layout."""

from __future__ import annotations

import json
import re
import shutil
import types
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.push_to_hf_hub import save_for_hf

import clipforge
from clipforge.checkpoint import load, pretrained
from clipforge.checkpoint.hf import save_hf_dir
from clipforge.errors import CheckpointError, OfflineError
from clipforge.factory import create_model
from clipforge.registry import get_model_config
from clipforge.tokenizer import tokenize

TEXTS = ["a photo of a cat", "an emoji of a red heart", "", "dogs running on a beach at sunset"]
REPO = "testorg/tiny-convnext"
_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of our own, offline."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _open_clip_model(tmp_path: Path, name: str = "cf-hub-tiny-convnext") -> tuple[torch.nn.Module, dict]:
    """open_clip's own CLIP with random weights, built by its factory from a config file."""
    cfg = get_model_config("tiny-convnext").to_dict()
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(3)
    return open_clip.create_model(name).eval(), cfg


def _write_repo(model: torch.nn.Module, cfg: dict, directory: Path, safetensors: bool = True) -> Path:
    """open_clip's own writer of Hub repositories (what `push_to_hf_hub` uploads)."""
    no_tokenizer_files = types.SimpleNamespace(save_pretrained=lambda _: None)
    save_for_hf(model, no_tokenizer_files, cfg, directory, safe_serialization=safetensors)
    return directory


def _into_cache(repo_dir: Path, cache: Path, repo: str = REPO) -> None:
    """The Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/<files>}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(repo_dir, root / "snapshots" / _COMMIT)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(_COMMIT)


def _assert_same_features(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    images = torch.randn(len(TEXTS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = tokenize(TEXTS)
    with torch.no_grad():
        for a, b in [(ours.encode_image(images), ref.encode_image(images)), (ours.encode_text(tokens), ref.encode_text(tokens))]:
            assert (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("safetensors", [True, False])
def test_local_dir_loads_an_open_clip_repository(tmp_path: Path, safetensors: bool) -> None:
    ref, cfg = _open_clip_model(tmp_path)
    repo = _write_repo(ref, cfg, tmp_path / "repo", safetensors)
    model, _ = load(f"local-dir:{repo}")
    assert model.config == get_model_config("tiny-convnext")
    _assert_same_features(model, ref)
    assert open_clip.create_model(f"local-dir:{repo}") is not None  # open_clip reads it too


def test_hf_hub_loads_from_the_cache_offline(tmp_path: Path, _hub_env: Path) -> None:
    ref, cfg = _open_clip_model(tmp_path)
    _into_cache(_write_repo(ref, cfg, tmp_path / "repo"), _hub_env)
    model, _ = clipforge.load(f"hf-hub:{REPO}")  # the public entry point
    _assert_same_features(model, ref)


def test_offline_error_names_repository_files_and_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OfflineError) as caught:
        load(f"hf-hub:{REPO}")
    message = str(caught.value)
    for part in (REPO, "HF_HUB_OFFLINE is set", "open_clip_config.json", "open_clip_model.safetensors",
                 "https://huggingface.co/testorg/tiny-convnext", "config.json and model.safetensors"):  # fmt: skip
        assert part in message, (part, message)
    # Following the sentence: the files placed in the directory it names load with local-dir:.
    target = re.search(r"load 'local-dir:([^']+)'", message).group(1)
    ref, cfg = _open_clip_model(tmp_path)
    _write_repo(ref, cfg, Path(target))
    model, _ = load(f"local-dir:{target}")
    _assert_same_features(model, ref)


def test_download_false_is_offline_too(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(OfflineError, match="downloads are disabled"):
        load(f"hf-hub:{REPO}", download=False)


def test_local_dir_loads_a_hugging_face_repository(tmp_path: Path) -> None:
    ours = create_model("tiny-vit", seed=0)
    save_hf_dir(ours, tmp_path / "hf")
    model, _ = load(f"local-dir:{tmp_path / 'hf'}")
    _assert_same_features(model, ours)


def test_pretrained_tag_from_the_cache(tmp_path: Path, _hub_env: Path, monkeypatch) -> None:
    # A registered architecture: our config, the repository's weights (as open_clip does).
    monkeypatch.setitem(pretrained.OPEN_CLIP_WEIGHTS, ("tiny-convnext", "testtag"), pretrained.HubWeights("tiny-convnext", REPO))
    ref, cfg = _open_clip_model(tmp_path)
    repo = _write_repo(ref, cfg, tmp_path / "repo")
    _into_cache(repo, _hub_env)
    model, _ = load("tiny-convnext", pretrained="testtag")
    _assert_same_features(model, ref)
    # An architecture we have no config for: the repository's open_clip_config.json.
    other = "testorg/other-arch"
    monkeypatch.setitem(pretrained.OPEN_CLIP_WEIGHTS, ("cf-other", "t"), pretrained.HubWeights("cf-other", other))
    _into_cache(repo, _hub_env, other)
    model, _ = load("cf-other", pretrained="t")
    _assert_same_features(model, ref)


def test_published_tag_offline_names_its_repository() -> None:
    with pytest.raises(OfflineError, match="laion/CLIP-ViT-B-32-laion2B-s34B-b79K"):
        load("ViT-B-32", pretrained="laion2b_s34b_b79k")
    with pytest.raises(CheckpointError, match="unknown pretrained tag 'laion2b' for 'ViT-B-32'; its tags: .*laion2b_s34b_b79k"):
        load("ViT-B-32", pretrained="laion2b")


def test_activation_and_layout_errors(tmp_path: Path) -> None:
    ref, cfg = _open_clip_model(tmp_path)
    repo = _write_repo(ref, cfg, tmp_path / "repo")
    with pytest.raises(CheckpointError, match="activation mismatch"):
        load(f"local-dir:{repo}", quick_gelu=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="open_clip_config.json and open_clip_model.safetensors"):
        load(f"local-dir:{tmp_path / 'empty'}")
    with pytest.raises(CheckpointError, match="hf-hub:ORG/NAME"):
        load("hf-hub:no-slash")
