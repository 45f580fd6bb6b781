"""The service's error handlers: our exception types -> 4xx, and request bodies that are not what
an endpoint takes (binary, not UTF-8, multipart sent to a JSON endpoint) -> a 4xx that says so.

Why a validation handler of our own: FastAPI's default one echoes each error's ``input`` through
``jsonable_encoder``, which decodes ``bytes`` as UTF-8, so a PNG posted to a JSON endpoint (the
raw body becomes the input of the "not an object" error) raised UnicodeDecodeError: a 500.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ClipforgeError, ConfigError, DataError, SearchIndexError

__all__ = ["add_error_handlers", "validation_errors", "NOT_JSON"]

NOT_JSON = ("the body is not a JSON object: send JSON text (UTF-8) with content-type application/json; "
            "an image goes base64-encoded in a JSON field, or as a file to a multipart endpoint (/api/search/upload)")  # fmt: skip
_PARSE_FAILED = "There was an error parsing the body"  # FastAPI's words when reading the body raised
_MAX_INPUT_CHARS = 200


def add_error_handlers(app: FastAPI) -> None:
    """DataError -> 422, ConfigError -> 400, SearchIndexError -> 409, other ClipforgeError -> 400;
    request validation -> 422 with JSON-safe details; unreadable bodies -> 400 with a sentence."""

    def handler(status: int):
        async def handle(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handle

    app.add_exception_handler(DataError, handler(422))  # bad image, bad filter, bad query
    app.add_exception_handler(ConfigError, handler(400))
    app.add_exception_handler(SearchIndexError, handler(409))  # index state (e.g. an item just deleted)
    app.add_exception_handler(ClipforgeError, handler(400))
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class _AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: an echoed input may hold a lone surrogate
    (``"\\ud800"`` is valid JSON, but not encodable as UTF-8), which must not turn a 422 into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


async def _validation_failed(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _AsciiJSON({"detail": validation_errors(exc.errors())}, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
    if exc.status_code == 400 and exc.detail == _PARSE_FAILED:
        cause = exc.__cause__
        why = f" ({type(cause).__name__})" if cause is not None else ""
        return JSONResponse({"detail": NOT_JSON + why}, status_code=400)
    return await http_exception_handler(request, exc)


def validation_errors(errors: Any) -> list[dict[str, Any]]:
    """pydantic/FastAPI error dicts -> JSON-safe ones: ``type``, ``loc``, ``msg``, and ``input``
    only when it is JSON and short; a whole body that is bytes or a form gets the NOT_JSON sentence."""
    out = []
    for error in errors:
        row = {"type": str(error.get("type", "")), "loc": [_safe_loc(p) for p in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        value = error.get("input")
        if isinstance(value, (bytes, bytearray, memoryview, FormData)):
            row["msg"] = NOT_JSON
        elif (text := _json_or_none(value)) is not None and len(text) <= _MAX_INPUT_CHARS:
            row["input"] = value
        if isinstance(error.get("ctx"), dict):
            row["ctx"] = {str(k): v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in error["ctx"].items()}
        out.append(row)
    return out


def _safe_loc(part: Any) -> int | str:
    return part if isinstance(part, (int, str)) else str(part)


def _json_or_none(value: Any) -> str | None:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
