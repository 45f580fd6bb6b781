"""POST /encode and clipforge.serve.client.CLIPClient: the vectors are the library's Embedder's
for the same inputs (fp32: within 1e-5), in JSON and multipart, through the micro-batcher, from
a real server process; bad input gets a 4xx that names the item."""

from __future__ import annotations

import base64
import io
import json
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

LONG = "a photo of " + "a very long caption " * 30  # far over 77 tokens
TEXTS = ["a cat", "a purple circle on a green background", LONG, "🙂 ünïcödé 中文", "<|endoftext|> tricky"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(colour=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def model_ref(index: Path) -> str:
    with sqlite3.connect(index / "meta.sqlite") as conn:
        return conn.execute("SELECT value FROM info WHERE key = 'model'").fetchone()[0]


def reference(index: Path, precision: str = "fp32"):
    """The library's own embedder for the index's model, outside any server."""
    import clipforge
    from clipforge.index.embedder import Embedder

    ref = model_ref(index)
    model, preprocess = clipforge.load(ref)
    return Embedder(model, preprocess, ref, precision=precision)


def image_files(collection: Path, n: int = 3) -> list[Path]:
    return sorted(collection.rglob("*.png"))[:n]


def reference_images(embedder, blobs: list[bytes]) -> np.ndarray:
    from clipforge.images import decode_image

    return embedder.images([decode_image(b) for b in blobs])


def close(a, b, atol: float = 1e-5) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and float(np.abs(a - b).max()) <= atol


@pytest.fixture
def fp32_client(index_copy):
    from fastapi.testclient import TestClient

    from clipforge.serve import create_app

    with TestClient(create_app(index_copy, precision="fp32", max_encode_items=16), raise_server_exceptions=False) as c:
        yield c


def test_encode_json_and_multipart_equal_the_embedder(fp32_client, index_copy: Path, collection: Path) -> None:
    ref = reference(index_copy)
    paths = image_files(collection)
    blobs = [p.read_bytes() for p in paths]
    want_texts, want_images = ref.texts(TEXTS), reference_images(ref, blobs)

    answer = fp32_client.post("/encode", json={"texts": TEXTS, "images": [b64(b) for b in blobs]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["dim"], body["precision"], body["context_length"]) == ("tiny.safetensors", 32, "fp32", 77)
    assert body["truncated"] == [2]
    assert close(body["texts"], want_texts) and close(body["images"], want_images)
    assert np.allclose(np.linalg.norm(body["texts"], axis=1), 1, atol=1e-5)

    files = [("images", (p.name, b, "image/png")) for p, b in zip(paths, blobs)]
    form = fp32_client.post("/encode", data={"texts": TEXTS}, files=files)
    assert form.status_code == 200, form.text
    assert close(form.json()["texts"], want_texts) and close(form.json()["images"], want_images)
    assert form.json()["truncated"] == [2]

    only_images = fp32_client.post("/encode", files=files[:1]).json()
    assert only_images["texts"] == [] and close(only_images["images"], want_images[:1])
    data_url = fp32_client.post("/encode", json={"images": ["data:image/png;base64," + b64(blobs[0])]}).json()
    assert close(data_url["images"], want_images[:1])
    assert "/encode" in fp32_client.get("/openapi.json").json()["paths"]
    assert fp32_client.get("/api/info").json()["max_encode_items"] == 16


def test_default_precision_is_the_services_own(client, index_copy: Path) -> None:
    """Without --precision the engine is the index's ("auto": bf16 where native): within its rounding."""
    body = client.post("/encode", json={"texts": TEXTS[:2]}).json()
    want = reference(index_copy).texts(TEXTS[:2])
    assert body["precision"] in ("fp32", "bf16")
    assert (np.asarray(body["texts"]) * want).sum(axis=1).min() > 0.99  # cosine to the fp32 vectors


def test_encode_bad_inputs_say_which_item(fp32_client) -> None:
    from clipforge.serve.deps import DEFAULT_MAX_ENCODE_ITEMS

    assert DEFAULT_MAX_ENCODE_ITEMS == 256

    def detail(response, status: int) -> str:
        assert response.status_code == status, response.text
        return json.dumps(response.json()["detail"])

    good = b64(png())
    assert "nothing to encode" in detail(fp32_client.post("/encode", json={}), 422)
    assert "nothing to encode" in detail(fp32_client.post("/encode", json={"texts": [], "images": []}), 422)
    assert "texts[0] is empty" in detail(fp32_client.post("/encode", json={"texts": [""]}), 422)
    assert "texts[1] is empty" in detail(fp32_client.post("/encode", json={"texts": ["ok", " \n\t "]}), 422)
    assert "texts[0] has 10,001 characters" in detail(fp32_client.post("/encode", json={"texts": ["x" * 10_001]}), 422)
    assert "over this service's limit of 16" in detail(fp32_client.post("/encode", json={"texts": ["a"] * 17}), 413)
    assert "limit of 16" in detail(fp32_client.post("/encode", json={"texts": ["a"] * 10, "images": [good] * 7}), 413)
    assert "limit of 16" in detail(fp32_client.post("/encode", data={"texts": ["a"] * 17}), 413)  # 17: counted by us
    assert "limit" in detail(fp32_client.post("/encode", data={"texts": ["a"] * 40}), 413)  # 40: stopped by the parser
    assert "images[0]: the image is not valid base64" in detail(fp32_client.post("/encode", json={"images": ["%%%"]}), 422)
    assert "images[1]: not a readable image" in detail(fp32_client.post("/encode", json={"images": [good, b64(b"nope")]}), 422)
    files = [("images", ("good.png", png())), ("images", ("bad.png", b"not an image"))]
    assert "images[1] ('bad.png'): not a readable image" in detail(fp32_client.post("/encode", files=files), 422)
    assert "'texts' parts must be text fields" in detail(fp32_client.post("/encode", files=[("texts", ("t.txt", b"a cat"))]), 422)
    assert "'images' parts must be files" in detail(fp32_client.post("/encode", data={"images": good}), 422)
    assert "unknown multipart field(s) ['file']" in detail(fp32_client.post("/encode", files={"file": ("a.png", png())}), 422)
    for body in [{"texts": "a cat"}, {"texts": [1, 2]}, {"text": ["a cat"]}, {"images": [None]}, [], "a cat"]:
        detail(fp32_client.post("/encode", json=body), 422)
    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, "PNG")
    bomb = detail(fp32_client.post("/encode", json={"images": [b64(huge.getvalue())]}), 422)
    assert "images[0]: " in bomb and "pixels" in bomb
    assert fp32_client.post("/encode", json={"texts": ["still fine"]}).status_code == 200


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_NO_SERVER_DEPS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"fastapi", "starlette", "uvicorn", "pydantic", "faiss", "torch", "PIL", "httpx"}:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
from clipforge.serve.client import CLIPClient
vectors = CLIPClient(sys.argv[1]).encode_text(["a cat", "a dog"])
print(vectors.shape, vectors.dtype)
"""


@pytest.mark.slow
def test_client_round_trip_on_a_real_server(live_server, index_copy: Path, collection: Path) -> None:
    from clipforge.serve.client import CLIPClient, ServiceError, ServiceUnreachableError

    server = live_server(index_copy, "--precision", "fp32")
    ref = reference(index_copy)
    paths = image_files(collection)
    client = CLIPClient(server.url)

    with pytest.warns(UserWarning, match=r"texts \[2\] are longer than the model's context length"):
        texts = client.encode_text(TEXTS)
    assert texts.dtype == np.float32 and close(texts, ref.texts(TEXTS))
    assert (client.model, client.dim) == ("tiny.safetensors", 32)
    small_batches = CLIPClient(server.url, batch_size=2)
    assert close(small_batches.encode_text(TEXTS[:2] + TEXTS[3:]), ref.texts(TEXTS[:2] + TEXTS[3:]))  # 3 requests
    mixed = [paths[0], str(paths[1]), paths[2].read_bytes()]
    assert close(client.encode_image(mixed), reference_images(ref, [p.read_bytes() for p in paths]))
    assert close(client.encode_image(paths[0]), reference_images(ref, [paths[0].read_bytes()]))

    import httpx

    direct = httpx.post(server.url + "/api/search", json={"text": "a green circle", "k": 5}).json()["results"]
    assert [r["id"] for r in client.search("a green circle", k=5)] == [r["id"] for r in direct]
    by_image = client.search(image=paths[0], k=1)
    assert by_image[0]["filename"] == paths[0].name

    # Concurrent requests go through the micro-batcher: each still gets its own vectors.
    jobs = {i: [f"a picture number {i}", f"{i} shapes on a table"] for i in range(12)}
    got: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, client.encode_text(jobs[i]))) for i in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(close(got[i], ref.texts(jobs[i])) for i in jobs)

    with pytest.raises(ServiceError, match=r"refused /encode \(422\): texts\[0\] is empty") as refused:
        client.encode_text([""])
    assert refused.value.status == 422
    with pytest.raises(ServiceUnreachableError, match=r"cannot reach the clipforge service at http://127\.0\.0\.1:\d+") as down:
        CLIPClient(f"http://127.0.0.1:{unused_port()}", timeout=5).encode_text(["x"])
    assert str(down.value).count(". ") == 0 and "\n" not in str(down.value)  # one sentence

    alone = subprocess.run([sys.executable, "-c", _NO_SERVER_DEPS, server.url], capture_output=True, text=True, timeout=120)
    assert alone.returncode == 0 and alone.stdout.strip() == "(2, 32) float32", alone.stderr
