"""What every router of the service needs: its settings, the searcher it serves, and the request
helpers they share. ``app`` and ``knn`` both import this module, never each other (the app
mounts knn's router, so knn cannot import the app back).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from fastapi import Request

from ..errors import DataError
from ..images import MAX_IMAGE_PIXELS
from ..index.search import Searcher

__all__ = ["Settings", "DEFAULT_MAX_UPLOAD_BYTES", "get_searcher", "get_settings", "decode_base64"]

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    index_name: str
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS


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
