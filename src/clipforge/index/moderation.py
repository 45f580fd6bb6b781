"""Zero-shot moderation: score images against named concepts, each described by prompts and
contrasted with neutral prompts.

Score of concept c for an image x (a probability in [0, 1])::

    logits = s * [cos(x, p) for p in c.prompts] + [cos(x, q) for q in c.neutral]
    score  = sum(softmax(logits)[: len(c.prompts)])

with s the model's logit scale (exp(logit_scale), at most 100). It is CLIP's own zero-shot
classifier asked "this concept, or something ordinary that looks alike?": a margin against
neutral prompts, not an absolute similarity, which varies from model to model. An image is
flagged when score >= threshold.

Thresholds are model-specific: the shipped defaults (``moderation_default.json``) are a starting
point for OpenAI's ViT-B/32; calibrate them on labelled examples for any other model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["Concept", "Moderator", "load_concepts", "default_concepts_path"]


@dataclass(frozen=True)
class Concept:
    name: str
    prompts: tuple[str, ...]
    neutral: tuple[str, ...]
    threshold: float = 0.5

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "Concept":
        try:
            concept = cls(str(d["name"]), tuple(d["prompts"]), tuple(d["neutral"]), float(d.get("threshold", 0.5)))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: each concept needs name, prompts (list), neutral (list), threshold ({e})") from None
        if not concept.prompts or not concept.neutral or not 0.0 <= concept.threshold <= 1.0:
            raise ConfigError(f"{where}: concept {concept.name!r} needs >= 1 prompt, >= 1 neutral prompt and 0 <= threshold <= 1")
        return concept


def default_concepts_path() -> Path:
    return Path(str(resources.files("clipforge.index") / "moderation_default.json"))


def load_concepts(path: str | Path | None = None) -> list[Concept]:
    """Read a concept file (``None``: the shipped default)."""
    path = Path(path) if path is not None else default_concepts_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read concept file {path} ({e}); see {default_concepts_path()} for the format") from None
    items = data.get("concepts") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f"{path} needs a top-level 'concepts' list")
    concepts = [Concept.from_dict(d, str(path)) for d in items]
    if len({c.name for c in concepts}) != len(concepts):
        raise ConfigError(f"{path} names a concept twice; names must be unique")
    return concepts


class Moderator:
    """Concepts with their prompt embeddings, ready to score image vectors."""

    def __init__(self, concepts: list[Concept], embed_texts, logit_scale: float) -> None:
        """``embed_texts``: list[str] -> (n, dim) normalised vectors (e.g. ``Embedder.texts``)."""
        self.concepts = concepts
        self.scale = float(min(logit_scale, 100.0))
        self._prompts = [embed_texts(list(c.prompts) + list(c.neutral)) for c in concepts]  # each (m + j, dim)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(n, dim) normalised image vectors -> (n, concepts) scores in [0, 1]."""
        out = np.zeros((len(vectors), len(self.concepts)), dtype=np.float32)
        for j, (concept, prompts) in enumerate(zip(self.concepts, self._prompts)):
            logits = self.scale * (vectors @ prompts.T)  # (n, m + j)
            logits -= logits.max(axis=1, keepdims=True)  # stable softmax
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            out[:, j] = probs[:, : len(concept.prompts)].sum(axis=1)
        return out

    def flagged(self, scores: np.ndarray, only: list[str] | None = None) -> np.ndarray:
        """(n, concepts) scores -> (n,) bool: any (selected) concept at or over its threshold."""
        thresholds = np.array([c.threshold for c in self.concepts], dtype=np.float32)
        selected = np.array([only is None or c.name in only for c in self.concepts])
        return ((scores >= thresholds) & selected).any(axis=1) if len(self.concepts) else np.zeros(len(scores), bool)

    def describe(self, row: np.ndarray) -> dict[str, dict[str, float | bool]]:
        """One image's scores -> {concept: {"score", "threshold", "flagged"}}."""
        return {
            c.name: {"score": round(float(s), 4), "threshold": c.threshold, "flagged": bool(s >= c.threshold)}
            for c, s in zip(self.concepts, row)
        }
