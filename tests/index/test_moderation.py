"""Moderation: concept files, the score definition, and hiding flagged results in search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipforge.errors import ConfigError, DataError
from clipforge.index import Query, load_concepts, open_searcher
from clipforge.index.moderation import Concept, Moderator


def test_default_concepts_cover_the_usual_categories() -> None:
    concepts = load_concepts()
    assert {c.name for c in concepts} >= {"violence", "gore", "nudity", "weapons", "drugs", "hate_symbols"}
    assert all(c.prompts and c.neutral and 0 < c.threshold < 1 for c in concepts)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "cannot read concept file"),
        ('{"concepts": {}}', "top-level 'concepts' list"),
        ('{"concepts": [{"name": "x", "prompts": ["a"]}]}', "each concept needs"),
        ('{"concepts": [{"name": "x", "prompts": ["a"], "neutral": [], "threshold": 0.5}]}', ">= 1 neutral"),
        ('{"concepts": [{"name": "x", "prompts": ["a"], "neutral": ["b"], "threshold": 2}]}', "0 <= threshold <= 1"),
    ],
)
def test_bad_concept_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_concepts(path)


def test_score_is_the_softmax_mass_on_the_concept_prompts() -> None:
    basis = np.eye(4, dtype=np.float32)
    table = {"danger": basis[0], "also danger": basis[1], "calm": basis[2]}
    concept = Concept("danger", ("danger", "also danger"), ("calm",), threshold=0.6)
    moderator = Moderator([concept], lambda texts: np.stack([table[t] for t in texts]), logit_scale=10.0)
    images = np.stack([basis[0], basis[2], basis[3]])  # like a concept prompt, like the neutral one, like neither
    scores = moderator.scores(images)[:, 0]
    e = np.exp(10.0)
    np.testing.assert_allclose(scores, [(e + 1) / (e + 2), 2 / (e + 2), 2 / 3], rtol=1e-5)
    assert moderator.flagged(scores[:, None]).tolist() == [True, False, True]
    assert moderator.describe(scores[:, None][0])["danger"]["flagged"] is True


def test_every_result_carries_scores_and_hidden_results_are_replaced(built_index: Path, tmp_path: Path) -> None:
    # A concept whose threshold flags about half of this collection with this (untrained) model.
    concept = {"name": "round", "prompts": ["a circle"], "neutral": ["a square"], "threshold": 0.5}
    searcher = open_searcher(built_index)
    try:
        ids, vectors = searcher.store.all_vectors()
        probe = Moderator([Concept("round", ("a circle",), ("a square",))], searcher.embedder.texts, float(searcher.moderator.scale))
        concept["threshold"] = float(np.median(probe.scores(vectors)[:, 0]))
    finally:
        searcher.store.close()
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps({"concepts": [concept]}))
    searcher = open_searcher(built_index, concepts=path)
    try:
        flagged_ids = {int(i) for i, f in zip(ids, searcher.moderator.flagged(searcher.moderator.scores(vectors))) if f}
        assert 0 < len(flagged_ids) < len(ids)
        query = Query(text="a shape")
        everything = searcher.search(query, k=len(ids))
        assert all(set(r.moderation) == {"round"} for r in everything)
        assert {r.item.id for r in everything if r.moderation["round"]["flagged"]} == flagged_ids
        clean = [r.item.id for r in everything if r.item.id not in flagged_ids]
        k = min(10, len(clean))
        assert [r.item.id for r in searcher.search(query, k=k, hide_flagged=True)] == clean[:k]
        with pytest.raises(DataError, match="unknown moderation concepts"):
            searcher.search(query, k=k, hide_flagged=["other"])
        assert len(searcher.search(query, k=len(ids), hide_flagged=True)) == len(clean)
    finally:
        searcher.store.close()
