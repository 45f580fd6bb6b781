"""What the demo measures: zero-shot on trained and held-out concepts, retrieval both ways,
example predictions and the nearest confusions. Built on clipforge.eval."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import torch
from PIL import Image

from ..datasets.shards import Manifest
from ..errors import DataError
from ..eval.features import embed_captions, embed_pil_images
from ..eval.retrieval import retrieval_metrics
from ..eval.zeroshot import classification_metrics, zero_shot_classifier
from ..models.clip import CLIP

__all__ = ["EvalSplit", "load_split", "evaluate_split", "heldout_zeroshot_hook"]


@dataclass
class EvalSplit:
    name: str
    images: list[Image.Image]
    concepts: list[str]
    captions: list[list[str]]
    keys: list[str]

    @property
    def classnames(self) -> list[str]:
        return sorted(set(self.concepts))

    def labels(self) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.classnames)}
        return torch.tensor([index[c] for c in self.concepts])


def load_split(manifest: Manifest, split: str) -> EvalSplit:
    import io

    import webdataset as wds

    paths = manifest.shard_paths(split)
    if not paths:
        raise DataError(f"the {manifest.name} data set has no {split!r} images; build it with more images (no --limit)")
    out = EvalSplit(split, [], [], [], [])
    for sample in wds.WebDataset(paths, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        out.images.append(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
        out.concepts.append(meta["concept"])
        out.captions.append(list(meta["captions"]))
        out.keys.append(sample["__key__"])
    return out


def evaluate_split(model: CLIP, preprocess: Callable, split: EvalSplit, templates: list[str],
                   n_examples: int = 24) -> dict[str, Any]:  # fmt: skip
    model.eval()
    with torch.no_grad():
        image_features = embed_pil_images(model, split.images, preprocess)
        classifier = zero_shot_classifier(model, split.classnames, templates)
        logits = image_features @ classifier  # (images, classes)
        metrics = classification_metrics(logits, split.labels(), len(split.classnames))
        flat = [c for caps in split.captions for c in caps]
        owner = [i for i, caps in enumerate(split.captions) for _ in caps]
        metrics.update(retrieval_metrics(image_features, embed_captions(model, flat), owner))
    metrics["examples"] = _examples(split, logits, n_examples)
    metrics["confusions"] = _confusions(split.classnames, metrics["confusion_matrix"])
    metrics["n_images"], metrics["n_classes"] = len(split.images), len(split.classnames)
    return metrics


def _examples(split: EvalSplit, logits: torch.Tensor, n: int) -> list[dict[str, Any]]:
    probs = logits.mul(100).softmax(dim=1)
    step = max(1, len(split.images) // n)
    out = []
    for i in list(range(0, len(split.images), step))[:n]:
        top = probs[i].topk(min(3, probs.shape[1]))
        out.append({"index": i, "key": split.keys[i], "truth": split.concepts[i],
                    "top3": [(split.classnames[j], float(p)) for p, j in zip(top.values, top.indices)]})  # fmt: skip
    return out


def _confusions(classnames: list[str], confusion: list[list[int]], n: int = 10) -> list[dict[str, Any]]:
    pairs = [(count, t, p) for t, row in enumerate(confusion) for p, count in enumerate(row) if t != p and count]
    pairs.sort(reverse=True)
    return [{"true": classnames[t], "predicted": classnames[p], "count": c} for c, t, p in pairs[:n]]


def heldout_zeroshot_hook(split: EvalSplit, preprocess: Callable, templates: list[str]) -> Callable[[CLIP], dict]:
    """A cheap periodic evaluation for the training loop: zero-shot top-1 on held-out concepts."""
    labels = split.labels()
    images = torch.stack([preprocess(im) for im in split.images])  # decoded once

    def hook(model: CLIP) -> dict[str, float]:
        feats = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
        logits = feats @ zero_shot_classifier(model, split.classnames, templates)
        return {"zeroshot_top1": (logits.argmax(dim=1) == labels).float().mean().item()}

    return hook
