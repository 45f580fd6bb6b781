"""A small client for a running ``clipforge serve``: embeddings from ``/encode`` and searches
from ``/api/search``. Only the standard library (urllib) and numpy, so it installs and imports
without the server's packages:

    from clipforge.serve.client import CLIPClient
    client = CLIPClient("http://127.0.0.1:8000")
    texts = client.encode_text(["a cat", "a dog"])          # (2, dim) float32, L2-normalised
    images = client.encode_image(["cat.jpg", png_bytes])    # paths or encoded files
    hits = client.search(text="a cat on a sofa", k=5)       # [{"id", "score", "caption", ...}]

Long jobs are split into requests of ``batch_size`` items (the service's default limit).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid
import warnings
from os import PathLike
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from ..errors import ClipforgeError

__all__ = ["CLIPClient", "ServiceError", "ServiceUnreachableError"]

ImageInput = Union[str, "PathLike[str]", bytes]


class ServiceError(ClipforgeError):
    """The service answered with an error; ``status`` is its HTTP status, the message its reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServiceUnreachableError(ServiceError):
    """No answer from the service: nothing listening, a wrong address, or a timeout."""


class CLIPClient:
    """``CLIPClient(url)``: embeddings and searches from a clipforge service at ``url``."""

    def __init__(self, url: str, *, timeout: float = 60.0, token: str | None = None, batch_size: int = 256) -> None:
        if not url.startswith(("http://", "https://")):
            raise ClipforgeError(f"the service URL must start with http:// or https://, got {url!r}")
        self.url, self.timeout, self.token, self.batch_size = url.rstrip("/"), timeout, token, batch_size
        self.model: str | None = None  # filled in by the first /encode answer
        self.dim: int | None = None

    # ---- public -----------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str] | str) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised. Texts longer than the model's context are
        truncated by the service, with a warning naming them."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        blocks, cut = [], []
        for start in range(0, len(texts), self.batch_size):
            answer = self._post_json("/encode", {"texts": texts[start : start + self.batch_size]})
            blocks.append(self._vectors(answer, "texts"))
            cut += [start + i for i in answer.get("truncated", [])]
        if cut:
            warnings.warn(f"texts {cut} are longer than the model's context length and were truncated", stacklevel=2)
        return self._stack(blocks)

    def encode_image(self, images: Sequence[ImageInput] | ImageInput) -> np.ndarray:
        """Image files (paths) or their bytes -> (n, dim) float32, L2-normalised."""
        items = [images] if isinstance(images, (str, bytes, PathLike)) else list(images)
        blocks = []
        for start in range(0, len(items), self.batch_size):
            files = [_read_image(item) for item in items[start : start + self.batch_size]]
            body, content_type = _multipart("images", files)
            blocks.append(self._vectors(self._request("/encode", body, content_type), "images"))
        return self._stack(blocks)

    def search(self, text: str | None = None, *, image: ImageInput | None = None, k: int = 10, **options: Any) -> list[dict[str, Any]]:
        """Results of ``/api/search``, best first; ``options`` are its other fields
        (``filters``, ``image_id``, ``text_weight``, ``hide_flagged`` ...)."""
        import base64

        body: dict[str, Any] = {"k": k, **options}
        if text is not None:
            body["text"] = text
        if image is not None:
            body["image_base64"] = base64.b64encode(_read_image(image)[1]).decode()
        return self._post_json("/api/search", body)["results"]

    def health(self) -> dict[str, Any]:
        return self._request("/health", None, None)

    # ---- HTTP -------------------------------------------------------------------------------
    def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request(path, json.dumps(body).encode(), "application/json")

    def _request(self, path: str, body: bytes | None, content_type: str | None) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise ServiceError(f"the service at {self.url} refused {path} ({e.code}): {_detail(e)}", e.code) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ServiceUnreachableError(
                f"cannot reach the clipforge service at {self.url} ({reason}); start it with `clipforge serve INDEX` or check the URL"
            ) from None

    def _vectors(self, answer: dict[str, Any], key: str) -> np.ndarray:
        self.model, self.dim = answer.get("model"), answer.get("dim")
        return np.asarray(answer[key], dtype=np.float32).reshape(-1, answer["dim"])

    def _stack(self, blocks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(blocks) if blocks else np.zeros((0, self.dim or 0), np.float32)


def _read_image(item: ImageInput) -> tuple[str, bytes]:
    """(file name, bytes) of a path or of bytes given as they are."""
    if isinstance(item, bytes):
        return "image", item
    path = Path(item)
    try:
        return path.name, path.read_bytes()
    except OSError as e:
        raise ClipforgeError(f"cannot read the image {str(path)!r} ({e.strerror or e}); give an existing file or its bytes") from None


def _multipart(field: str, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with one file part per (name, bytes) -> (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{safe}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        parts += [head.encode(), data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _detail(error: urllib.error.HTTPError) -> str:
    """The service's own sentence (its JSON ``detail``), else the HTTP reason."""
    try:
        detail = json.loads(error.read()).get("detail")
    except (ValueError, AttributeError, OSError):
        detail = None
    if isinstance(detail, list):  # pydantic's list of errors: where and what
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}" for d in detail if isinstance(d, dict))
    return str(detail or error.reason)
