"""The model behind an index: a checkpoint and its preprocessing, run by the inference engine,
with a small cache of text embeddings (queries repeat), and how query parts combine."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import DataError, SearchIndexError
from ..images import MAX_IMAGE_PIXELS, decode_image
from ..inference.engine import Engine, EngineConfig, Precision
from ..models.clip import CLIP
from ..transforms import Preprocess

__all__ = ["Embedder", "load_embedder", "combine_queries"]


def combine_queries(parts: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """Weighted sum of normalised embeddings, re-normalised: [(vector, weight)] -> (embed_dim,)."""
    total = sum(w * v / max(float(np.linalg.norm(v)), 1e-12) for v, w in parts)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise DataError("the query's parts cancel out (weights sum to zero); give positive weights")
    return (total / norm).astype(np.float32)


class Embedder:
    """A model and its preprocessing, run by the inference engine (``precision="auto"``: bf16
    where the hardware computes it natively), with a small cache of text embeddings (queries
    repeat). ``model`` stays the caller's fp32 model, for CLIPScore."""

    def __init__(
        self, model: CLIP, preprocess: Preprocess, model_ref: str, cache_size: int = 4096, precision: Precision = "auto"
    ) -> None:
        self.model, self.preprocess, self.model_ref = model.eval(), preprocess, model_ref
        self.engine = Engine(model, EngineConfig(precision=precision))
        self.dim = model.config.embed_dim
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        # One text -> vector past the cache; a service swaps in a micro-batcher (serve/batching.py).
        self.encode_text: Callable[[str], np.ndarray] = lambda text: self.texts([text])[0]

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> (n, embed_dim) float32, L2-normalised (long texts are truncated)."""
        return self.engine.encode_texts(list(texts)).numpy()

    def text(self, text: str) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        vector = self.encode_text(text)
        with self._lock:
            self._cache[text] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (n, embed_dim) float32, L2-normalised."""
        return self.engine.encode_images(torch.stack([self.preprocess(im) for im in images])).numpy()

    def image_bytes(self, data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
        return self.images([decode_image(data, max_pixels)])[0]


def load_embedder(model_ref: str) -> Embedder:
    """A checkpoint path or published name -> Embedder. Registry names alone are refused: they
    mean a random initialisation, which a later query could never reproduce."""
    from ..checkpoint import load
    from ..checkpoint.pretrained import resolve_pretrained
    from ..registry import MODEL_CONFIGS

    path = Path(model_ref)
    if not path.exists() and model_ref in MODEL_CONFIGS and resolve_pretrained(model_ref, None) is None:
        raise SearchIndexError(
            f"{model_ref!r} names an architecture, not weights: an index needs the same model at "
            "query time; pass a checkpoint file (clipforge.save) or a published name such as 'ViT-B/32'"
        )
    model, preprocess = load(str(path.resolve()) if path.exists() else model_ref)
    return Embedder(model, preprocess, str(path.resolve()) if path.exists() else model_ref)
