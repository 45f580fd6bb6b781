"""open_clip's pretrained tags: every entry of our table is open_clip's own (repository,
activation, normalisation, resize), and every architecture is one open_clip knows."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
from open_clip import pretrained as oc_pretrained
from open_clip.constants import INCEPTION_MEAN, OPENAI_DATASET_MEAN

from clipforge.checkpoint.pretrained import OPEN_CLIP_WEIGHTS, OPENAI_WEIGHTS, list_pretrained, resolve_open_clip_tag
from clipforge.errors import CheckpointError
from clipforge.config import siglip_vit_fields
from clipforge.registry import MODEL_CONFIGS, get_model_config

_MEANS = {"openai": OPENAI_DATASET_MEAN, "inception": INCEPTION_MEAN}
_OPEN_CLIP_CONFIGS = Path(open_clip.__file__).parent / "model_configs"


@pytest.mark.parametrize("key", sorted(OPEN_CLIP_WEIGHTS), ids=lambda k: f"{k[0]}:{k[1]}")
def test_entry_is_open_clips(key: tuple[str, str]) -> None:
    name, tag = key
    theirs = oc_pretrained.get_pretrained_cfg(name, tag)
    ours = OPEN_CLIP_WEIGHTS[key]
    assert theirs, f"open_clip has no tag {tag!r} for {name!r}"
    assert ours.repo == theirs["hf_hub"].rstrip("/")
    assert ours.architecture == name + ("-quickgelu" if theirs.get("quick_gelu") else "")
    assert _MEANS[ours.normalize] == tuple(theirs["mean"])
    assert ours.resize == theirs.get("resize_mode", "shortest")
    assert name in open_clip.list_models()


def test_the_issue_s_families_are_listed() -> None:
    tags = set(OPEN_CLIP_WEIGHTS)
    for key in [("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-16", "laion2b_s34b_b88k"), ("ViT-L-14", "laion2b_s32b_b82k"),
                ("ViT-H-14", "laion2b_s32b_b79k"), ("ViT-g-14", "laion2b_s34b_b88k"), ("ViT-bigG-14", "laion2b_s39b_b160k"),
                ("ViT-B-32", "datacomp_xl_s13b_b90k"), ("ViT-B-16", "datacomp_xl_s13b_b90k"),
                ("ViT-L-14", "datacomp_xl_s13b_b90k"), ("ViT-B-32", "metaclip_400m"), ("ViT-L-14", "metaclip_fullcc"),
                ("convnext_base_w", "laion2b_s13b_b82k"), ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup"),
                ("convnext_xxlarge", "laion2b_s34b_b82k_augreg_soup"), ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"),
                ("xlm-roberta-large-ViT-H-14", "frozen_laion5b_s13b_b90k"), ("ViT-B-16-SigLIP", "webli"),
                ("ViT-SO400M-14-SigLIP-384", "webli"), ("ViT-B-16-SigLIP2", "webli"), ("ViT-SO400M-14-SigLIP2", "webli")]:  # fmt: skip
        assert key in tags, key


@pytest.mark.parametrize("name", sorted({w.architecture for w in OPEN_CLIP_WEIGHTS.values()} & set(MODEL_CONFIGS)))
def test_registered_architectures_equal_open_clip_configs(name: str) -> None:
    # A tag whose architecture we register loads with our config: it must be open_clip's.
    base = name.removesuffix("-quickgelu")
    theirs = json.loads((_OPEN_CLIP_CONFIGS / f"{base}.json").read_text())
    ours = get_model_config(name)
    assert ours.embed_dim == theirs["embed_dim"]
    assert ours.quick_gelu == (name.endswith("-quickgelu") or theirs.get("quick_gelu", False))
    # A SigLIP's timm ViT is read as our own ViT (config.siglip_vit_fields): compare with that.
    for key, value in siglip_vit_fields(theirs["vision_cfg"]).items():
        if key != "timm_model_pretrained":
            assert getattr(ours.vision, key) == (tuple(value) if isinstance(value, list) else value), key
    for key, value in theirs["text_cfg"].items():
        assert getattr(ours.text, key) == value, key


def test_resolving_tags() -> None:
    assert resolve_open_clip_tag("ViT-B-32-quickgelu", "metaclip_400m").architecture == "ViT-B-32-quickgelu"
    assert ("ViT-B-32", "openai") in list_pretrained() and len(list_pretrained()) == len(OPEN_CLIP_WEIGHTS) + len(OPENAI_WEIGHTS)
    with pytest.raises(CheckpointError, match="no published weights for the model 'ViT-X'"):
        resolve_open_clip_tag("ViT-X", "laion2b")
