"""A corpus of bad input sent to every endpoint that takes input: no 5xx, a message that says
what was wrong, and the index unchanged (same rows, same vectors, same FAISS ids)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

AUTH = {"Authorization": "Bearer test-token-123"}


def png(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def bad_images() -> dict[str, bytes]:
    good = png()
    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, "PNG")  # 400 megapixels behind a small file
    return {
        "zero-byte": b"",
        "truncated-png": good[: len(good) // 2],
        "header-only-png": good[:40],
        "corrupt": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "text": "not an image at all, ünïcödé".encode(),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "huge-dimensions": huge.getvalue(),
        "truncated-jpeg": jpeg_bytes()[:200],
    }


def jpeg_bytes(mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (48, 40), (10, 200, 90, 0)[: len(mode)] if mode != "RGB" else (10, 200, 90)).save(buf, "JPEG")
    return buf.getvalue()


def animated_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("P", (32, 32), i * 40) for i in range(4)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def snapshot(index: Path) -> tuple:
    with sqlite3.connect(index / "meta.sqlite") as conn:
        items = conn.execute("SELECT * FROM items ORDER BY id").fetchall()
        vectors = conn.execute("SELECT * FROM vectors ORDER BY id").fetchall()
    digest = hashlib.sha256(repr((items, vectors)).encode()).hexdigest()
    return digest, len(items)


def assert_client_error(response, what: object = "", *, allow_ok: bool = False) -> None:
    assert response.status_code < 500, (str(what)[:200], response.text)
    if not allow_ok:
        assert 400 <= response.status_code < 500, response.text
        detail = response.json()["detail"]
        assert detail and (isinstance(detail, list) or len(detail) > 10)


def test_bad_inputs_never_crash_the_service_or_change_the_index(client, index_copy: Path) -> None:
    before = snapshot(index_copy)
    faiss_before = sorted(client.app.state.searcher.store.ann.ids().tolist())
    for name, data in bad_images().items():
        for url in ("/api/search/upload", "/api/moderate"):
            assert_client_error(client.post(url, files={"file": (f"{name}.png", data)}))
        assert_client_error(client.post("/api/items", files={"file": (f"{name}.png", data)}, headers=AUTH))
        assert_client_error(client.post("/api/score", files={"file": (f"{name}.png", data)}, data={"captions": ["x"]}))
        assert_client_error(client.post("/api/search", json={"image_base64": base64.b64encode(data).decode()}))
        assert_client_error(client.post("/knn-service", content=json.dumps({"image": base64.b64encode(data).decode(), "modality": "image", "num_images": 3})))
        encoded = client.post("/encode", json={"texts": ["a cat"], "images": [base64.b64encode(png()).decode(), base64.b64encode(data).decode()]})
        assert_client_error(encoded)
        assert "images[1]" in encoded.json()["detail"], encoded.text
        uploaded = client.post("/encode", files=[("images", ("ok.png", png())), ("images", (f"{name}.png", data))])
        assert_client_error(uploaded)
        assert f"images[1] ('{name}.png')" in uploaded.json()["detail"], uploaded.text

    bodies = [
        b"", b"{", b"[1, 2", b"null", b"[]", b'"text"', b"\xff\xfe\x00garbage", b"{" * 10000 + b"}" * 10000,
        json.dumps({"text": ""}).encode(), json.dumps({"text": None, "k": 5}).encode(),
        json.dumps({"text": "x" * 20_000}).encode(), json.dumps({"text": "ok", "k": 0}).encode(),
        json.dumps({"text": "ok", "k": 10**12}).encode(), json.dumps({"text": "ok", "k": "ten"}).encode(),
        json.dumps({"image_base64": "%%% not base64 %%%"}).encode(), json.dumps({"image_id": 10**9}).encode(),
        json.dumps({"image_id": 2**70}).encode(), json.dumps({"embedding": [1.0, 2.0]}).encode(),
        json.dumps({"embedding": [0.0] * 32}).encode(), json.dumps({"text": "a", "text_weight": -1}).encode(),
        json.dumps({"text": "a", "filters": {"added_from": "yesterday"}}).encode(),
        json.dumps({"text": "a", "filters": {"where": [{"field": "id", "op": "in", "value": 3}]}}).encode(),
        json.dumps({"text": "a", "filters": {"where": [{"field": "id", "op": "=", "value": 2**70}]}}).encode(),
        json.dumps({"text": "a", "filters": {"where": [{"field": "id; DROP TABLE items", "op": "=", "value": 1}]}}).encode(),
        json.dumps({"text": "a", "hide_flagged": {"x": 1}}).encode(),
    ]  # fmt: skip
    for body in bodies:
        assert_client_error(client.post("/api/search", content=body, headers={"content-type": "application/json"}), body)
    knn_bodies = [
        b"", b"{", b"\xff", b"[]", json.dumps({"modality": "image", "num_images": 2}).encode(),
        json.dumps({"text": "x", "modality": "text", "num_images": 2}).encode(),  # an image-only index
        json.dumps({"text": "x", "use_mclip": True}).encode(),
        json.dumps({"image_url": "http://127.0.0.1:1/x.png", "modality": "image", "num_images": 2}).encode(),
        json.dumps({"text": "x", "indice_name": "other"}).encode(), json.dumps({"text": "x", "num_images": -1}).encode(),
        json.dumps({"embedding_input": ["a"]}).encode(), json.dumps({"embedding_input": [1.0] * 3}).encode(),
    ]  # fmt: skip
    for body in knn_bodies:
        assert_client_error(client.post("/knn-service", content=body), body)
    for body in [b"{", json.dumps({"ids": "1"}).encode(), json.dumps({"ids": [1], "indice_name": "other"}).encode()]:
        assert_client_error(client.post("/metadata", content=body))

    # Queries that are odd but valid get answers.
    for text in ["🙂🙃 ünïcödé 中文 عربى", " ", "x" * 9_999, "<script>alert(1)</script>", "\u0000\u200b"]:
        assert_client_error(client.post("/api/search", json={"text": text, "k": 3}), allow_ok=True)
    assert client.post("/metadata", content=json.dumps({"ids": [10**9, -5, 2**70]})).status_code < 500
    for url in ["/api/items/0", "/api/items/99999999", "/api/items/abc", "/api/items/1e3/image", f"/api/items/{2**80}/thumbnail"]:
        assert_client_error(client.get(url))
    assert_client_error(client.delete("/api/items/99999999", headers=AUTH))
    assert_client_error(client.post("/api/items", headers=AUTH))  # no file at all
    assert_client_error(client.post("/api/score", files={"file": ("a.png", png())}))  # no captions
    assert_client_error(client.post("/api/score", files={"file": ("a.png", png())}, data={"captions": ["  "]}))

    assert snapshot(index_copy) == before
    assert sorted(client.app.state.searcher.store.ann.ids().tolist()) == faiss_before
    assert client.get("/health").json()["items"] == 36


JSON_ENDPOINTS = ("/api/search", "/knn-service", "/metadata", "/encode")
MULTIPART_ENDPOINTS = ("/api/search/upload", "/api/moderate", "/api/score", "/api/items")


def binary_bodies() -> dict[str, dict]:
    """Bodies that are not JSON text, each as httpx keyword arguments: an image sent as multipart
    to a JSON endpoint, raw image bytes under every content type, bytes that are not UTF-8."""
    image = png()
    return {
        "multipart-image": {"files": {"file": ("a.png", image, "image/png")}},
        "multipart-image-and-text": {"files": {"file": ("a.png", image, "image/png")}, "data": {"text": "a cat"}},
        "png-as-json": {"content": image, "headers": {"content-type": "application/json"}},
        "png-as-png": {"content": image, "headers": {"content-type": "image/png"}},
        "png-untyped": {"content": image},
        "png-as-text": {"content": image, "headers": {"content-type": "text/plain; charset=utf-8"}},
        "jpeg-as-json-utf8": {"content": jpeg_bytes(), "headers": {"content-type": "application/json; charset=utf-8"}},
        "not-utf8-as-json": {"content": b"\xff\xfe\x00garbage", "headers": {"content-type": "application/json"}},
        "latin1-string-in-json": {"content": b'{"text": "caf\xe9"}', "headers": {"content-type": "application/json"}},
        "lone-surrogate-escape": {"content": b'{"text": "\\ud800"}', "headers": {"content-type": "application/json"}},
        "form-urlencoded": {"data": {"text": "a cat"}},
        "multipart-no-boundary": {"content": image, "headers": {"content-type": "multipart/form-data"}},
    }


def test_binary_bodies_get_a_clear_4xx_from_every_endpoint(client, index_copy: Path) -> None:
    """A PNG posted to a JSON endpoint once answered 500 (FastAPI's validation handler decoded the
    raw body as UTF-8 to echo it back)."""
    before = snapshot(index_copy)
    for name, kwargs in binary_bodies().items():
        for url in JSON_ENDPOINTS:
            response = client.post(url, **kwargs)
            if name == "lone-surrogate-escape":  # valid JSON text, but no valid string
                assert_client_error(response, (name, url), allow_ok=True)
                continue
            assert_client_error(response, (name, url))
            assert "JSON" in json.dumps(response.json()["detail"]), (name, url, response.text)  # says what to send
        for url in MULTIPART_ENDPOINTS:
            if name.startswith("multipart-image"):
                continue  # what these endpoints take
            with_token = {**kwargs, "headers": {**AUTH, **kwargs.get("headers", {})}}
            # a form with only a text is a query /api/search/upload answers
            assert_client_error(client.post(url, **with_token), (name, url), allow_ok=name == "form-urlencoded")
    assert snapshot(index_copy) == before


def test_unusual_but_valid_images_are_accepted(client) -> None:
    """Animated GIF (first frame), CMYK and greyscale JPEG, palette PNG with transparency."""
    rgba = io.BytesIO()
    Image.new("RGBA", (30, 30), (0, 0, 0, 0)).convert("P").save(rgba, "PNG", transparency=0)
    cases = {"anim.gif": animated_gif(), "cmyk.jpg": jpeg_bytes("CMYK"), "grey.jpg": jpeg_bytes("L"), "palette.png": rgba.getvalue()}
    for name, data in cases.items():
        found = client.post("/api/search/upload", files={"file": (name, data)}, data={"k": "2"})
        assert found.status_code == 200 and len(found.json()["results"]) == 2, (name, found.text)
        added = client.post("/api/items", files={"file": (name, data)}, headers=AUTH)
        assert added.status_code == 201, (name, added.text)
        assert client.get(f"/api/items/{added.json()['id']}/thumbnail").status_code == 200
    assert client.get("/health").json()["items"] == 40
    stored = sorted(p.suffix for p in (client.app.state.searcher.store.files_dir).rglob("*.*"))
    assert stored == [".gif", ".jpg", ".jpg", ".png"]
    assert np.isfinite(client.app.state.searcher.store.all_vectors()[1]).all()
