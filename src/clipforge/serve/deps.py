"""What every router of the service needs: its settings, the searcher it serves, and the request
helpers they share. ``app`` and ``knn`` both import this module, never each other (the app
mounts knn's router, so knn cannot import the app back).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from pydantic import ValidationError

from ..errors import DataError
from ..images import MAX_IMAGE_PIXELS
from ..index.search import Searcher

__all__ = ["Settings", "DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_ENCODE_ITEMS", "get_searcher", "get_settings", "decode_base64",
           "parse_json_body"]  # fmt: skip

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_ENCODE_ITEMS = 256  # texts + images in one /encode request; a client splits larger jobs


@dataclass(frozen=True)
class Settings:
    index_name: str
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    max_encode_items: int = DEFAULT_MAX_ENCODE_ITEMS


def get_searcher(request: Request) -> Searcher:
    """The searcher ``create_app`` opened (``app.state.searcher``)."""
    return request.app.state.searcher


def get_settings(request: Request) -> Settings:
    """The app's settings (``app.state.settings``)."""
    return request.app.state.settings


def decode_base64(data: str | None) -> bytes | None:
    """Base64 text (optionally a ``data:`` URL) -> bytes; None stays None."""
    if data is None:
        return None
    try:
        return base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data, validate=True)
    except (binascii.Error, ValueError):
        raise DataError("the image is not valid base64; send the file's bytes base64-encoded") from None


async def parse_json_body(request: Request, model: type) -> Any:
    """The body as JSON, whatever its content type, validated by the pydantic ``model``: 400 when
    it is not JSON text (binary, not UTF-8, absurd nesting), 422 when it does not fit the model."""
    raw = await request.body()
    try:
        return model.model_validate(json.loads(raw))
    except json.JSONDecodeError as e:
        raise HTTPException(400, f"the body is not valid JSON ({e.msg} at position {e.pos})") from None
    except ValidationError as e:
        raise HTTPException(422, json.loads(e.json(include_url=False, include_input=False))) from None
    except (ValueError, RecursionError) as e:  # bytes that are not UTF-8, absurd nesting
        raise HTTPException(400, f"the body is not valid JSON text ({type(e).__name__}); send UTF-8 JSON") from None
