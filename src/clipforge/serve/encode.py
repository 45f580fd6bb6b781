"""``POST /encode``: texts and images -> the index model's L2-normalised embeddings, as JSON.

Two forms of one endpoint, told apart by the content type:

- JSON: ``{"texts": ["a cat", ...], "images": ["<base64>", ...]}`` (base64 as clip-retrieval's
  knn-service ``image`` field; a ``data:`` URL too);
- multipart/form-data: ``texts`` text fields and ``images`` files, each repeatable (a URL-encoded
  form carries ``texts`` only).

The answer: ``{"model", "dim", "precision", "context_length", "texts": [[...]], "images": [[...]],
"truncated": [i, ...], "took_ms"}``. Vectors come from the same engine the index's queries use;
concurrent requests meet in micro-batches (``batching.batch_encode_requests``). Limits, each a
4xx that says what to change: at most ``Settings.max_encode_items`` texts + images (413), none at
all or an empty text (422), a text over MAX_QUERY_CHARS characters (422), an image that does not
decode (422, naming it: ``images[2] ('cat.png')``). A text longer than the context length in
tokens is truncated, as every CLIP does, and its index is listed in ``truncated``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DataError
from ..images import decode_image
from ..index.search import MAX_QUERY_CHARS, Searcher
from ..tokenizer import get_tokenizer
from .batching import batch_encode_requests
from .deps import decode_base64, get_searcher, get_settings, parse_json_body
from .schemas import EncodeRequest, EncodeResponse

if TYPE_CHECKING:
    import torch

    from ..index.embedder import Embedder

__all__ = ["router", "Encoders", "install_encoders", "truncated_texts"]

router = APIRouter(tags=["embeddings"])

_MULTIPART_SCHEMA = {
    "type": "object",
    "properties": {
        "texts": {"type": "array", "items": {"type": "string"}, "description": "Texts (repeat the field)."},
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "Image files (repeat the field)."},
    },
}  # fmt: skip
_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": EncodeRequest.model_json_schema()},
    "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
}}}  # fmt: skip
_FIELDS_HINT = "/encode takes 'texts' (text fields) and 'images' (files), or a JSON body {\"texts\": [...], \"images\": [base64, ...]}"


@dataclass(frozen=True)
class Encoders:
    """How the endpoint reaches the engine: a request's texts -> (n, dim), its preprocessed
    images (n, 3, H, W) -> (n, dim); micro-batched across requests or called directly."""

    texts: Callable[[tuple[str, ...]], np.ndarray]
    images: Callable[[torch.Tensor], np.ndarray]


def install_encoders(app: FastAPI, searcher: Searcher, batched: bool) -> None:
    """Set ``app.state.encoders`` over the searcher's embedder; batchers stop when it closes."""
    embedder = searcher.embedder
    if batched:
        batchers = batch_encode_requests(embedder)
        app.state.encoders = Encoders(batchers.texts, batchers.images)
        searcher.on_close += [batchers.texts.close, batchers.images.close]
    else:
        app.state.encoders = Encoders(lambda texts: embedder.texts(list(texts)), lambda x: _image_chunks(embedder, x))


def _image_chunks(embedder: Embedder, images: torch.Tensor) -> np.ndarray:
    chunks = images.split(embedder.engine.config.image_batch_size)
    return np.concatenate([embedder.engine.encode_images(c).numpy() for c in chunks])


def truncated_texts(texts: Sequence[str], context_length: int) -> list[int]:
    """Indices of the texts with more tokens than the text tower reads (start and end tokens
    take two of its ``context_length`` positions)."""
    tokenizer = get_tokenizer()
    return [i for i, t in enumerate(texts) if len(tokenizer.encode(t)) > context_length - 2]


@router.post("/encode", response_model=EncodeResponse, openapi_extra=_BODY,
             responses={413: {"description": "More items than the service takes in one request."}})  # fmt: skip
async def encode(request: Request) -> Response:
    """Embed texts and images with the index's model: L2-normalised vectors, in the order given."""
    start = time.perf_counter()
    limit = get_settings(request).max_encode_items
    if _is_form(request):
        texts, images = await _read_form(request, limit)
    else:
        body: EncodeRequest = await parse_json_body(request, EncodeRequest)
        _check_count(len(body.texts) + len(body.images), limit)
        texts = body.texts
        # base64 of up to the body limit: decoded in the thread pool, not on the event loop
        images = await run_in_threadpool(lambda: [("", _base64(i, data)) for i, data in enumerate(body.images)])
    _check_texts(texts)
    searcher, encoders = get_searcher(request), request.app.state.encoders
    out = await run_in_threadpool(_encode, searcher, encoders, texts, images)
    out["took_ms"] = round(1000 * (time.perf_counter() - start), 2)
    return JSONResponse(out)


def _is_form(request: Request) -> bool:
    """multipart/form-data, or a plain URL-encoded form (``curl -d texts=...``: texts only)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind in ("multipart/form-data", "application/x-www-form-urlencoded")


def _check_count(n: int, limit: int) -> None:
    if n == 0:
        raise DataError("nothing to encode: give at least one text or image (" + _FIELDS_HINT + ")")
    if n > limit:
        raise HTTPException(413, f"{n} texts and images in one request, over this service's limit of {limit}; send them in several requests")


def _check_texts(texts: Sequence[str]) -> None:
    for i, text in enumerate(texts):
        if not text.strip():
            raise DataError(f"texts[{i}] is empty; every text needs at least one character that is not a space")
        if len(text) > MAX_QUERY_CHARS:
            raise DataError(f"texts[{i}] has {len(text):,} characters, over the limit of {MAX_QUERY_CHARS:,}; shorten it")


def _base64(index: int, data: str) -> bytes:
    try:
        return decode_base64(data)  # type: ignore[return-value]  # a str in, bytes out
    except DataError as e:
        raise DataError(f"images[{index}]: {e}") from None


async def _read_form(request: Request, limit: int) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Multipart ``texts`` fields and ``images`` files -> (texts, [(label, bytes)])."""
    try:
        form = await request.form(max_files=limit + 1, max_fields=limit + 1)
    except StarletteHTTPException as e:
        if e.status_code != 400:
            raise  # the body size limit's 413
        if "Too many" in str(e.detail):
            raise HTTPException(413, f"over {limit} texts and images in one request, this service's limit; send them in several requests") from None
        raise HTTPException(400, f"the multipart body could not be read ({e.detail}); {_FIELDS_HINT}") from None
    try:
        texts, files = _form_parts(form.multi_items())
        _check_count(len(texts) + len(files), limit)
        return texts, [(f" ({f.filename!r})" if f.filename else "", await f.read()) for f in files]
    finally:
        await form.close()


def _form_parts(items: list[tuple[str, Any]]) -> tuple[list[str], list[UploadFile]]:
    texts, files, unknown = [], [], []
    for key, value in items:
        if key == "texts" and isinstance(value, str):
            texts.append(value)
        elif key == "images" and isinstance(value, UploadFile):
            files.append(value)
        elif key == "texts":
            raise DataError("'texts' parts must be text fields, not files; send image files as 'images'")
        elif key == "images":
            raise DataError("'images' parts must be files; a base64 image goes in a JSON body's 'images' list")
        else:
            unknown.append(key)
    if unknown:
        raise DataError(f"unknown multipart field(s) {sorted(set(unknown))}; {_FIELDS_HINT}")
    return texts, files


def _encode(searcher: Searcher, encoders: Encoders, texts: list[str], images: list[tuple[str, bytes]]) -> dict[str, Any]:
    embedder = searcher.embedder
    pixels = _preprocess(embedder, images, searcher.max_pixels)  # decode all first: a bad image fails before any work
    context_length = embedder.engine.context_length
    text_vectors = encoders.texts(tuple(texts)) if texts else np.zeros((0, embedder.dim), np.float32)
    image_vectors = encoders.images(pixels) if pixels is not None else np.zeros((0, embedder.dim), np.float32)
    return {
        "model": _model_name(embedder.model_ref), "dim": embedder.dim, "precision": embedder.engine.precision,
        "context_length": context_length, "texts": text_vectors.tolist(), "images": image_vectors.tolist(),
        "truncated": truncated_texts(texts, context_length),
    }  # fmt: skip


def _preprocess(embedder: Embedder, images: list[tuple[str, bytes]], max_pixels: int) -> torch.Tensor | None:
    """[(label, bytes)] -> (n, 3, H, W) preprocessed, or None for no images; DataError naming the
    first image that does not decode."""
    if not images:
        return None
    import torch

    tensors = []
    for i, (label, data) in enumerate(images):
        try:
            tensors.append(embedder.preprocess(decode_image(data, max_pixels)))
        except DataError as e:
            raise DataError(f"images[{i}]{label}: {e}") from None
    return torch.stack(tensors)


def _model_name(model_ref: str) -> str:
    """A published name as it is; a checkpoint by its file name (the server's paths stay its own)."""
    path = Path(model_ref)
    return path.name if path.is_file() else model_ref
