"""clipforge: contrastive language-image pretraining.

The public API, imported lazily so ``import clipforge`` is fast and pulls in neither torch nor
the optional heavy parts (FAISS, FastAPI) until a name is used.

    import clipforge
    model, preprocess = clipforge.load("ViT-B-32-quickgelu")       # or a checkpoint path
    tokens = clipforge.tokenize(["a photo of a cat"])
    image_features, text_features, logit_scale = model(images, tokens)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute" (an explicit table; nothing registers itself at import time)
_EXPORTS: dict[str, str] = {
    "list_models": "clipforge.registry:list_models",
    "create_model": "clipforge.factory:create_model",
    "create_preprocess": "clipforge.factory:create_preprocess",
    "load": "clipforge.checkpoint:load",
    "save": "clipforge.checkpoint:save",
    "convert": "clipforge.checkpoint:convert",
    "tokenize": "clipforge.tokenizer:tokenize",
    "image_transform": "clipforge.transforms:image_transform",
    "CLIP": "clipforge.models.clip:CLIP",
    "CLIPConfig": "clipforge.config:CLIPConfig",
    "VisionConfig": "clipforge.config:VisionConfig",
    "TextConfig": "clipforge.config:TextConfig",
    "ClipforgeError": "clipforge.errors:ClipforgeError",
    "zero_shot_classifier": "clipforge.eval.zeroshot:zero_shot_classifier",
    "clip_score": "clipforge.eval.clip_score:clip_score",
    "linear_probe": "clipforge.eval.linear_probe:linear_probe",
    "retrieval_metrics": "clipforge.eval.retrieval:retrieval_metrics",
    "train": "clipforge.train:train",
    "RunConfig": "clipforge.train:RunConfig",
    "build_dataset": "clipforge.datasets:build_dataset",
    "build_index": "clipforge.index:build_index",
    "open_searcher": "clipforge.index:open_searcher",
    "create_app": "clipforge.serve:create_app",
    "make_loader": "clipforge.data:make_loader",
    "load_items": "clipforge.data:load_items",
    "load_run_config": "clipforge.train:load_run_config",
    "ClipLoss": "clipforge.losses:ClipLoss",
    "SigLipLoss": "clipforge.losses:SigLipLoss",
    "Engine": "clipforge.inference.engine:Engine",
    "EngineConfig": "clipforge.inference.engine:EngineConfig",
    "embed_collection": "clipforge.inference.stream:embed_collection",
    "ClipObjective": "clipforge.guidance:ClipObjective",
    "rerank": "clipforge.guidance:rerank",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'clipforge' has no attribute {name!r}")
    module_name, attr = target.split(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
