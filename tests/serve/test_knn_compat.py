"""clip-retrieval's own Python client (ClipClient) against a real `clipforge serve` process."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pytest


def clip_client_module():
    """clip_retrieval/clip_client.py, loaded on its own: the package's __init__ imports its Flask
    back-end, which the client does not need (install with `pip install --no-deps clip-retrieval`)."""
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clip-retrieval is not installed: pip install --no-deps clip-retrieval")
    path = Path(next(iter(spec.submodule_search_locations))) / "clip_client.py"
    module_spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_clip_retrieval_client_queries_a_clipforge_index(live_server, index_copy: Path, collection: Path) -> None:
    client_module = clip_client_module()
    server = live_server(index_copy)
    name = httpx.get(server.url + "/indices-list").json()
    assert name == ["idx"]
    client = client_module.ClipClient(
        url=server.url + "/knn-service", indice_name="idx", num_images=5, deduplicate=False,
        use_safety_model=False, use_violence_detector=False,
    )  # fmt: skip
    path = collection / "plants" / "img008.png"
    with sqlite3.connect(index_copy / "meta.sqlite") as conn:
        own, caption = conn.execute("SELECT id, caption FROM items WHERE path = ?", (str(path.resolve()),)).fetchone()

    by_image = client.query(image=str(path))  # the client base64-encodes the file
    assert len(by_image) == 5 and by_image[0]["id"] == own and by_image[0]["caption"] == caption
    assert by_image[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert httpx.get(by_image[0]["url"]).content == path.read_bytes()

    by_text = client.query(text="a yellow triangle")
    assert len(by_text) == 5 and all({"id", "similarity", "url", "caption"} <= set(r) for r in by_text)
    assert [r["similarity"] for r in by_text] == sorted((r["similarity"] for r in by_text), reverse=True)

    by_embedding = client.query(embedding_input=[float(x) for x in _stored_vector(index_copy, own)])
    assert by_embedding[0]["id"] == own

    # the front-end's way: more result ids than images, then /metadata for the rest
    body = {"text": "a shape", "modality": "image", "num_images": 2, "num_result_ids": 6, "indice_name": "idx"}
    rows = httpx.post(server.url + "/knn-service", content=json.dumps(body)).json()
    assert len(rows) == 6 and all("url" in r for r in rows[:2]) and all(set(r) == {"id", "similarity"} for r in rows[2:])
    meta = httpx.post(server.url + "/metadata", content=json.dumps({"ids": [r["id"] for r in rows[2:]], "indice_name": "idx"})).json()
    assert [m["id"] for m in meta] == [r["id"] for r in rows[2:]] and all(m["metadata"]["url"] for m in meta)

    refused = httpx.post(server.url + "/knn-service", content=json.dumps({"image_url": "http://example.invalid/a.png", "modality": "image", "num_images": 1}))
    assert refused.status_code == 422 and "no outbound requests" in refused.json()["detail"]
    # the client's defaults: deduplicate, safety model and violence detector all on
    defaults = client_module.ClipClient(url=server.url + "/knn-service", indice_name="idx", num_images=36)
    kept = defaults.query(image=str(path))
    vectors = np.stack([_stored_vector(index_copy, r["id"]) for r in kept])
    similarity = vectors @ vectors.T - 2 * np.eye(len(kept))
    assert kept[0]["id"] == own and similarity.max() < 0.94  # clip-back's duplicate threshold


def _stored_vector(index: Path, item_id: int) -> np.ndarray:
    with sqlite3.connect(index / "meta.sqlite") as conn:
        blob = conn.execute("SELECT vector FROM vectors WHERE id = ?", (item_id,)).fetchone()[0]
    return np.frombuffer(blob, dtype="<f4")
