"""Request guards: a body size limit enforced while the body streams in, the API token, and a
same-origin check on requests that change the index (a web page on another site must not be
able to make a browser add or delete images on a service bound to localhost)."""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

__all__ = ["BodyLimit", "check_token", "check_same_origin"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing re-raises it instead of turning it into 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over the limit of {max_bytes:,} bytes; send a smaller image")


class BodyLimit:
    """ASGI middleware: 413 when a request body exceeds ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._reject(send)
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": _TooLarge(self.max_bytes).detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def check_token(request: Request, token: str | None) -> None:
    """401 unless the request carries the service token (when one is set): ``Authorization:
    Bearer TOKEN`` or ``X-API-Token: TOKEN``."""
    if not token:
        return
    given = request.headers.get("x-api-token") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "this action needs the service's API token: send 'Authorization: Bearer TOKEN'")


def check_same_origin(request: Request) -> None:
    """403 for a browser request from another origin (Origin header naming another host)."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # not a cross-site browser request (curl, scripts, same-origin GET)
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        raise HTTPException(403, f"requests that change the index must come from this service's own page, not {origin}")
