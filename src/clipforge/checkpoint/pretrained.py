"""Published weights: OpenAI's (names, download locations, SHA-256 sums, the local cache) and
open_clip's pretrained tags (``("ViT-B-32", "laion2b_s34b_b79k")`` -> a Hugging Face repository,
fetched by ``checkpoint.hub`` through the Hugging Face cache).

Nothing downloads unless asked: ``fetch`` looks in the cache first, downloads only when
``download=True`` (the default for ``clipforge.load``), verifies the checksum, and when offline
says exactly which file to place where.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..config import PreprocessConfig
from ..errors import CheckpointError, OfflineError

__all__ = ["tag_preprocess", "PretrainedWeights", "OPENAI_WEIGHTS", "OPENAI_NAMES", "cache_dir", "fetch", "resolve_pretrained",
           "HubWeights", "OPEN_CLIP_WEIGHTS", "list_pretrained", "resolve_open_clip_tag"]  # fmt: skip

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


# --- open_clip's pretrained tags ---------------------------------------------------------------


@dataclass(frozen=True)
class HubWeights:
    """An open_clip pretrained tag: the weights in a Hugging Face repository in open_clip's
    layout (``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``)."""

    architecture: str  # model name (open_clip's), the -quickgelu variant where trained with it
    repo: str  # Hugging Face repository id
    normalize: str = "openai"  # image mean/std the weights were trained with: 'openai' or 'inception'
    resize: str = "shortest"  # 'shortest' side then center crop, or 'squash' to the square
    # open_clip publishes no SHA-256 for its Hub weights; the Hub's own LFS hashes apply.
    sha256: str | None = None


# open_clip's INCEPTION_MEAN/STD (pretrained tags marked "inception": SigLIP, some LAION ViTs)
_INCEPTION = (0.5, 0.5, 0.5)


def tag_preprocess(weights: HubWeights, base: PreprocessConfig) -> PreprocessConfig:
    """The preprocessing a tag's weights were trained with, over the architecture's own."""
    mean = _INCEPTION if weights.normalize == "inception" else base.mean
    std = _INCEPTION if weights.normalize == "inception" else base.std
    resize = "squash" if weights.resize == "squash" else base.resize_mode
    return dataclasses.replace(base, mean=mean, std=std, resize_mode=resize)


def _hub(arch: str, repo: str, normalize: str = "openai", resize: str = "shortest") -> HubWeights:
    return HubWeights(arch, repo, normalize, resize)


# (model name, tag) -> weights, as open_clip 3.3's pretrained.py (its `hf_hub` entries; tests check
# every entry against it). The most used tags; the CommonPool ablations and CoCa are left out.
OPEN_CLIP_WEIGHTS: dict[tuple[str, str], HubWeights] = {
    ("ViT-B-32", "laion400m_e31"): _hub("ViT-B-32-quickgelu", "timm/vit_base_patch32_clip_224.laion400m_e31"),
    ("ViT-B-32", "laion400m_e32"): _hub("ViT-B-32-quickgelu", "timm/vit_base_patch32_clip_224.laion400m_e32"),
    ("ViT-B-32", "laion2b_e16"): _hub("ViT-B-32", "timm/vit_base_patch32_clip_224.laion2b_e16"),
    ("ViT-B-32", "laion2b_s34b_b79k"): _hub("ViT-B-32", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ("ViT-B-32", "datacomp_xl_s13b_b90k"): _hub("ViT-B-32", "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"),
    ("ViT-B-32", "metaclip_400m"): _hub("ViT-B-32-quickgelu", "timm/vit_base_patch32_clip_224.metaclip_400m"),
    ("ViT-B-32", "metaclip_fullcc"): _hub("ViT-B-32-quickgelu", "timm/vit_base_patch32_clip_224.metaclip_2pt5b"),
    ("ViT-B-32-256", "datacomp_s34b_b86k"): _hub("ViT-B-32-256", "laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K"),
    ("ViT-B-16", "laion400m_e31"): _hub("ViT-B-16", "timm/vit_base_patch16_clip_224.laion400m_e31"),
    ("ViT-B-16", "laion400m_e32"): _hub("ViT-B-16", "timm/vit_base_patch16_clip_224.laion400m_e32"),
    ("ViT-B-16", "laion2b_s34b_b88k"): _hub("ViT-B-16", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
    ("ViT-B-16", "datacomp_xl_s13b_b90k"): _hub("ViT-B-16", "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K"),
    ("ViT-B-16", "datacomp_l_s1b_b8k"): _hub("ViT-B-16", "laion/CLIP-ViT-B-16-DataComp.L-s1B-b8K"),
    ("ViT-B-16", "dfn2b"): _hub("ViT-B-16-quickgelu", "apple/DFN2B-CLIP-ViT-B-16"),
    ("ViT-B-16", "metaclip_400m"): _hub("ViT-B-16-quickgelu", "timm/vit_base_patch16_clip_224.metaclip_400m"),
    ("ViT-B-16", "metaclip_fullcc"): _hub("ViT-B-16-quickgelu", "timm/vit_base_patch16_clip_224.metaclip_2pt5b"),
    ("ViT-L-14", "laion400m_e31"): _hub("ViT-L-14", "timm/vit_large_patch14_clip_224.laion400m_e31"),
    ("ViT-L-14", "laion400m_e32"): _hub("ViT-L-14", "timm/vit_large_patch14_clip_224.laion400m_e32"),
    ("ViT-L-14", "laion2b_s32b_b82k"): _hub("ViT-L-14", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "inception"),
    ("ViT-L-14", "datacomp_xl_s13b_b90k"): _hub("ViT-L-14", "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"),
    ("ViT-L-14", "metaclip_400m"): _hub("ViT-L-14-quickgelu", "timm/vit_large_patch14_clip_224.metaclip_400m"),
    ("ViT-L-14", "metaclip_fullcc"): _hub("ViT-L-14-quickgelu", "timm/vit_large_patch14_clip_224.metaclip_2pt5b"),
    ("ViT-L-14", "dfn2b"): _hub("ViT-L-14-quickgelu", "apple/DFN2B-CLIP-ViT-L-14"),
    ("ViT-L-14", "dfn2b_s39b"): _hub("ViT-L-14", "apple/DFN2B-CLIP-ViT-L-14-39B"),
    ("ViT-H-14", "laion2b_s32b_b79k"): _hub("ViT-H-14", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ("ViT-H-14", "metaclip_fullcc"): _hub("ViT-H-14-quickgelu", "timm/vit_huge_patch14_clip_224.metaclip_2pt5b"),
    ("ViT-H-14", "metaclip_altogether"): _hub("ViT-H-14", "timm/vit_huge_patch14_clip_224.metaclip_altogether"),
    ("ViT-H-14", "dfn5b"): _hub("ViT-H-14-quickgelu", "apple/DFN5B-CLIP-ViT-H-14", "openai", "squash"),
    ("ViT-g-14", "laion2b_s12b_b42k"): _hub("ViT-g-14", "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"),
    ("ViT-g-14", "laion2b_s34b_b88k"): _hub("ViT-g-14", "laion/CLIP-ViT-g-14-laion2B-s34B-b88K"),
    ("ViT-bigG-14", "laion2b_s39b_b160k"): _hub("ViT-bigG-14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
    ("ViT-bigG-14", "metaclip_fullcc"): _hub("ViT-bigG-14-quickgelu", "timm/vit_gigantic_patch14_clip_224.metaclip_2pt5b"),
    ("convnext_base", "laion400m_s13b_b51k"): _hub("convnext_base", "laion/CLIP-convnext_base-laion400M-s13B-b51K"),
    ("convnext_base_w", "laion2b_s13b_b82k"): _hub("convnext_base_w", "laion/CLIP-convnext_base_w-laion2B-s13B-b82K"),
    ("convnext_base_w", "laion2b_s13b_b82k_augreg"): _hub("convnext_base_w", "laion/CLIP-convnext_base_w-laion2B-s13B-b82K-augreg"),
    ("convnext_base_w", "laion_aesthetic_s13b_b82k"): _hub("convnext_base_w", "laion/CLIP-convnext_base_w-laion_aesthetic-s13B-b82K"),
    ("convnext_base_w_320", "laion_aesthetic_s13b_b82k"): _hub("convnext_base_w_320", "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K"),
    ("convnext_base_w_320", "laion_aesthetic_s13b_b82k_augreg"): _hub("convnext_base_w_320", "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K-augreg"),
    ("convnext_large_d", "laion2b_s26b_b102k_augreg"): _hub("convnext_large_d", "laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg"),
    ("convnext_large_d_320", "laion2b_s29b_b131k_ft"): _hub("convnext_large_d_320", "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft"),
    ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup"): _hub("convnext_large_d_320", "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"),
    ("convnext_xxlarge", "laion2b_s34b_b82k_augreg"): _hub("convnext_xxlarge", "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg"),
    ("convnext_xxlarge", "laion2b_s34b_b82k_augreg_rewind"): _hub("convnext_xxlarge", "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-rewind"),
    ("convnext_xxlarge", "laion2b_s34b_b82k_augreg_soup"): _hub("convnext_xxlarge", "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup"),
    ("roberta-ViT-B-32", "laion2b_s12b_b32k"): _hub("roberta-ViT-B-32", "laion/CLIP-ViT-B-32-roberta-base-laion2B-s12B-b32k"),
    ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"): _hub("xlm-roberta-base-ViT-B-32", "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k"),
    ("xlm-roberta-large-ViT-H-14", "frozen_laion5b_s13b_b90k"): _hub("xlm-roberta-large-ViT-H-14", "laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k"),
    # SigLIP / SigLIP2 (the architectures are part A's of issue #16): Inception mean/std, squashed.
    **{(arch, "webli"): _hub(arch, f"timm/{arch}", "inception", "squash") for arch in (
        "ViT-B-16-SigLIP", "ViT-B-16-SigLIP-256", "ViT-B-16-SigLIP-i18n-256", "ViT-B-16-SigLIP-384",
        "ViT-B-16-SigLIP-512", "ViT-L-16-SigLIP-256", "ViT-L-16-SigLIP-384", "ViT-SO400M-14-SigLIP",
        "ViT-SO400M-14-SigLIP-384", "ViT-B-32-SigLIP2-256", "ViT-B-16-SigLIP2", "ViT-B-16-SigLIP2-256",
        "ViT-B-16-SigLIP2-384", "ViT-B-16-SigLIP2-512", "ViT-L-16-SigLIP2-256", "ViT-L-16-SigLIP2-384",
        "ViT-L-16-SigLIP2-512", "ViT-SO400M-14-SigLIP2", "ViT-SO400M-14-SigLIP2-378",
        "ViT-SO400M-16-SigLIP2-256", "ViT-SO400M-16-SigLIP2-384", "ViT-SO400M-16-SigLIP2-512",
        "ViT-gopt-16-SigLIP2-256", "ViT-gopt-16-SigLIP2-384")},
}  # fmt: skip


def list_pretrained() -> list[tuple[str, str]]:
    """Every (model name, tag) with published weights: OpenAI's and open_clip's."""
    return sorted([(name, "openai") for name in OPENAI_WEIGHTS] + list(OPEN_CLIP_WEIGHTS))


def resolve_open_clip_tag(name: str, tag: str) -> HubWeights:
    """``("ViT-B-32", "laion2b_s34b_b79k")`` -> its repository; ``-quickgelu`` names work too."""
    key = (name, tag)
    if key not in OPEN_CLIP_WEIGHTS and name.endswith("-quickgelu"):
        key = (name.removesuffix("-quickgelu"), tag)
    if key in OPEN_CLIP_WEIGHTS:
        return OPEN_CLIP_WEIGHTS[key]
    tags = sorted(t for n, t in list_pretrained() if n == key[0])
    if not tags:
        raise CheckpointError(
            f"no published weights for the model {name!r}; `clipforge.checkpoint.pretrained.list_pretrained()` "
            "lists the (model, tag) pairs"
        )
    raise CheckpointError(f"unknown pretrained tag {tag!r} for {name!r}; its tags: {', '.join(tags)}")
