"""The JSON API over a real index and model (FastAPI's TestClient drives the real app)."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def item_id(index: Path, path: Path) -> int:
    with sqlite3.connect(index / "meta.sqlite") as conn:
        return conn.execute("SELECT id FROM items WHERE path = ?", (str(path.resolve()),)).fetchone()[0]


def test_health_info_and_openapi(client) -> None:
    assert client.get("/health").json()["items"] == 36
    info = client.get("/api/info").json()
    assert info["items"] == 36 and info["token_required"] is True and "violence" in info["concepts"]
    assert set(info["folders"]) == {"animals", "animals/cats", "plants"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/search/upload", "/api/items", "/knn-service", "/metadata", "/indices-list"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and "clipforge search" in page.text and "default-src 'self'" in page.headers["content-security-policy"]


def test_search_by_image_upload_text_and_combined(client, collection: Path, index_copy: Path, helpers) -> None:
    path = collection / "plants" / "img005.png"
    own = item_id(index_copy, path)
    assert ids(client.post("/api/search", json={"image_base64": b64(path.read_bytes()), "k": 3}))[0] == own
    near = client.post("/api/search/upload", files={"file": ("q.jpg", helpers.perturbed_copy(path), "image/jpeg")}, data={"k": "5"})
    assert ids(near)[0] == own
    text = client.post("/api/search", json={"text": "a green circle", "k": 7})
    body = text.json()["results"]
    assert len(body) == 7 and [r["score"] for r in body] == sorted((r["score"] for r in body), reverse=True)
    assert set(body[0]) >= {"id", "score", "caption", "folder", "moderation", "thumbnail_url", "image_url", "width", "tags"}
    assert "path" not in body[0]  # the server's file system layout is not exposed
    combined = client.post("/api/search", json={"text": "a green circle", "image_id": own, "text_weight": 0, "k": 1})
    assert ids(combined) == [own]
    upload_combined = client.post("/api/search/upload", files={"file": ("q.png", path.read_bytes())},
                                  data={"text": "anything", "text_weight": "0", "k": "1"})  # fmt: skip
    assert ids(upload_combined) == [own]


def test_filters_through_the_api_are_exact(client, index_copy: Path) -> None:
    query = {"text": "a shape", "k": 50}
    cats = client.post("/api/search", json={**query, "filters": {"folder": "animals/cats"}}).json()["results"]
    assert len(cats) == 12 and {r["folder"] for r in cats} == {"animals/cats"}
    where = {"where": [{"field": "folder", "op": "startswith", "value": "animals"}, {"field": "id", "op": ">=", "value": 10}]}
    got = client.post("/api/search", json={**query, "filters": where}).json()["results"]
    with sqlite3.connect(index_copy / "meta.sqlite") as conn:
        truth = [r[0] for r in conn.execute("SELECT id FROM items WHERE folder LIKE 'animals%' AND id >= 10 ORDER BY id")]
    assert sorted(r["id"] for r in got) == truth and 0 < len(truth) < 24
    uploaded = client.post("/api/search/upload", data={"text": "a shape", "k": "50", "filters": json.dumps({"folder": "plants"})})
    assert {r["folder"] for r in uploaded.json()["results"]} == {"plants"}
    future = client.post("/api/search", json={**query, "filters": {"added_from": "2999-01-01"}})
    assert future.status_code == 200 and future.json()["results"] == []
    bad = client.post("/api/search", json={**query, "filters": {"where": [{"field": "vector", "op": "=", "value": 1}]}})
    assert bad.status_code == 422 and "unknown filter field" in bad.json()["detail"]
    typo = client.post("/api/search", json={**query, "filter": {"folder": "plants"}})
    assert typo.status_code == 422  # misspelt field: an error, not a silently unfiltered search


def test_items_image_and_thumbnail_by_id_only(client, collection: Path, index_copy: Path) -> None:
    path = collection / "animals" / "img003.png"
    own = item_id(index_copy, path)
    meta = client.get(f"/api/items/{own}").json()
    assert meta["filename"] == "img003.png" and meta["path"] is None and meta["width"] == 64
    image = client.get(f"/api/items/{own}/image")
    assert image.content == path.read_bytes() and image.headers["content-type"] == "image/png"
    thumb = client.get(f"/api/items/{own}/thumbnail", params={"size": 32})
    assert thumb.headers["content-type"] == "image/jpeg" and max(Image.open(io.BytesIO(thumb.content)).size) == 32
    assert (index_copy / "thumbs" / f"{own}_32.jpg").is_file()
    assert client.get("/api/items/999999/image").status_code == 404
    assert client.get("/api/items/-1/image").status_code == 422
    assert client.get("/api/items/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)
    assert client.get("/api/items/1/thumbnail", params={"size": 100000}).status_code == 422


def test_add_needs_the_token_then_is_searchable_and_deletable(client, index_copy: Path, helpers) -> None:
    image, _ = helpers.draw_image(4242)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    data = buf.getvalue()
    files = {"file": ("new.png", data, "image/png")}
    assert client.post("/api/items", files=files).status_code == 401
    assert client.post("/api/items", files=files, headers={"Authorization": "Bearer wrong"}).status_code == 401
    evil = client.post("/api/items", files=files, headers={**AUTH, "Origin": "http://evil.example"})
    assert evil.status_code == 403
    added = client.post("/api/items", files=files, data={"caption": "a new one", "tags": "x, y", "folder": "up"}, headers=AUTH)
    assert added.status_code == 201, added.text
    new_id = added.json()["id"]
    assert client.post("/api/items", files=files, headers={"X-API-Token": TOKEN}).json()["duplicate_of"] == new_id
    found = client.post("/api/search", json={"image_base64": b64(data), "k": 1, "filters": {"tags": ["y"]}}).json()["results"]
    assert found[0]["id"] == new_id and found[0]["caption"] == "a new one" and found[0]["folder"] == "up"
    stored = list((index_copy / "files").rglob("*.png"))
    assert len(stored) == 1 and stored[0].read_bytes() == data
    near = client.post("/api/items", files={"file": ("n.jpg", helpers.perturbed_copy(stored[0]), "image/jpeg")},
                       data={"near_duplicate": "0.99"}, headers=AUTH)  # fmt: skip
    assert near.status_code == 200 and near.json()["near_duplicate_of"] == new_id
    assert len(list((index_copy / "files").rglob("*.*"))) == 1  # the rejected upload is not kept
    assert client.delete(f"/api/items/{new_id}").status_code == 401
    assert client.delete(f"/api/items/{new_id}", headers=AUTH).json() == {"deleted": [new_id]}
    assert client.delete(f"/api/items/{new_id}", headers=AUTH).status_code == 404
    assert client.get(f"/api/items/{new_id}/image").status_code == 404
    assert not stored[0].exists() and client.get("/health").json()["items"] == 36


def test_moderate_and_score(client, collection: Path) -> None:
    import clipforge
    from clipforge.eval.clip_score import clip_score

    path = collection / "plants" / "img002.png"
    moderation = client.post("/api/moderate", files={"file": ("a.png", path.read_bytes())}).json()["moderation"]
    assert set(moderation) >= {"violence", "nudity"} and all(0 <= m["score"] <= 1 for m in moderation.values())
    captions = ["a red square", "a photo of a dog"]
    scored = client.post("/api/score", files={"file": ("a.png", path.read_bytes())}, data={"captions": captions})
    assert scored.status_code == 200, scored.text
    model, _ = clipforge.load(client.app.state.searcher.embedder.model_ref)
    expected = clip_score(model, [Image.open(path)] * 2, captions, reduce=False)
    assert scored.json()["scores"] == pytest.approx(expected.tolist(), abs=1e-4)


def test_upload_limits(client, tmp_path: Path) -> None:
    big = b"\0" * (3 * 1024 * 1024)
    declared = client.post("/api/search/upload", files={"file": ("big.png", big)})
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(4):
            yield b"x" * (1024 * 1024)

    streamed = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    # a decompression bomb: a tiny file whose header claims 30000 x 30000 pixels
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, "PNG")
    assert len(bomb.getvalue()) < 2 * 1024 * 1024
    response = client.post("/api/search/upload", files={"file": ("bomb.png", bomb.getvalue())})
    assert response.status_code == 422 and "pixels" in response.json()["detail"]


def test_cors_is_opt_in_and_never_opens_writes(index_copy: Path) -> None:
    from fastapi.testclient import TestClient

    from clipforge.serve import create_app

    front = "http://front.example"
    with TestClient(create_app(index_copy, cors_origins=(front,))) as c:
        preflight = c.options("/knn-service", headers={"Origin": front, "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == front
        knn = c.post("/knn-service", content=json.dumps({"text": "x", "num_images": 1}), headers={"Origin": front})
        assert knn.status_code == 200 and knn.headers["access-control-allow-origin"] == front
        add = c.post("/api/items", files={"file": ("a.png", b"x")}, headers={"Origin": front})
        assert add.status_code == 403  # no token configured, but another origin still cannot write
        other = c.post("/knn-service", content=json.dumps({"text": "x", "num_images": 1}), headers={"Origin": "http://other.example"})
        assert "access-control-allow-origin" not in other.headers
