"""Published OpenAI weights: names, download locations, SHA-256 sums, and the local cache.

Nothing downloads unless asked: ``fetch`` looks in the cache first, downloads only when
``download=True`` (the default for ``clipforge.load``), verifies the checksum, and when offline
says exactly which file to place where.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, OfflineError

__all__ = ["PretrainedWeights", "OPENAI_WEIGHTS", "OPENAI_NAMES", "cache_dir", "fetch", "resolve_pretrained"]

_BASE = "https://openaipublic.azureedge.net/clip/models"


@dataclass(frozen=True)
class PretrainedWeights:
    architecture: str  # registry name of the architecture
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _openai(arch: str, sha: str, filename: str) -> PretrainedWeights:
    # OpenAI puts each file's SHA-256 in its URL path (clip/clip.py _MODELS).
    return PretrainedWeights(arch, f"{_BASE}/{sha}/{filename}", sha)


# (architecture, "openai") -> weights; the architecture is the QuickGELU variant they were trained with.
OPENAI_WEIGHTS: dict[str, PretrainedWeights] = {
    "RN50": _openai("RN50-quickgelu", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "RN101": _openai("RN101-quickgelu", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    "RN50x4": _openai("RN50x4-quickgelu", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    "RN50x16": _openai("RN50x16-quickgelu", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
    "RN50x64": _openai("RN50x64-quickgelu", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
    "ViT-B-32": _openai("ViT-B-32-quickgelu", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B-16": _openai("ViT-B-16-quickgelu", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L-14": _openai("ViT-L-14-quickgelu", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L-14-336": _openai("ViT-L-14-336-quickgelu", "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
}  # fmt: skip

# OpenAI's own spellings (clip.available_models()) -> our keys.
OPENAI_NAMES: dict[str, str] = {
    "RN50": "RN50", "RN101": "RN101", "RN50x4": "RN50x4", "RN50x16": "RN50x16", "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14", "ViT-L/14@336px": "ViT-L-14-336",
}  # fmt: skip


def cache_dir() -> Path:
    """``$CLIPFORGE_CACHE``, else ``$XDG_CACHE_HOME/clipforge``, else ``~/.cache/clipforge``."""
    if os.environ.get("CLIPFORGE_CACHE"):
        return Path(os.environ["CLIPFORGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipforge"


def resolve_pretrained(name: str, pretrained: str | None) -> PretrainedWeights | None:
    """``("ViT-B/32", None)`` or ``("ViT-B-32", "openai")`` -> weights; None if not pretrained."""
    if pretrained is None:
        key = OPENAI_NAMES.get(name)
        return OPENAI_WEIGHTS[key] if key else None
    if pretrained != "openai":
        raise CheckpointError(f"unknown pretrained tag {pretrained!r}; the published tag is 'openai'")
    key = OPENAI_NAMES.get(name, name.removesuffix("-quickgelu"))
    if key not in OPENAI_WEIGHTS:
        raise CheckpointError(
            f"no published OpenAI weights for {name!r}; available: {', '.join(OPENAI_WEIGHTS)}"
        )
    return OPENAI_WEIGHTS[key]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(weights: PretrainedWeights, *, cache: Path | None = None, download: bool = True,
          timeout: float = 30.0) -> Path:  # fmt: skip
    """Path of the verified cached file, downloading it first when allowed."""
    target = (cache or cache_dir()) / weights.filename
    if target.is_file():
        if _sha256(target) == weights.sha256:
            return target
        raise CheckpointError(
            f"{target} exists but its SHA-256 is not {weights.sha256}; delete it and retry"
        )
    if not download:
        raise OfflineError(_offline_message(weights, target, "downloads are disabled"))
    try:
        _download(weights, target, timeout)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise OfflineError(_offline_message(weights, target, f"download failed: {e}")) from None
    return target


def _offline_message(weights: PretrainedWeights, target: Path, why: str) -> str:
    return (
        f"pretrained weights {weights.filename} are not cached and cannot be fetched ({why}). "
        f"Download {weights.url} on a connected machine and place it at {target} "
        f"(SHA-256 {weights.sha256}); set CLIPFORGE_CACHE to use another directory."
    )


def _download(weights: PretrainedWeights, target: Path, timeout: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(weights.url, timeout=timeout) as source, open(partial, "wb") as out:
            for block in iter(lambda: source.read(1 << 20), b""):
                out.write(block)
                h.update(block)
        if h.hexdigest() != weights.sha256:
            raise CheckpointError(
                f"downloaded {weights.url} but its SHA-256 {h.hexdigest()} is not {weights.sha256}; "
                "the partial file was deleted, retry later"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
