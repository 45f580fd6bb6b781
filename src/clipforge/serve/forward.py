"""A read-only replica's writes go to the writer: the requests that change the index (adding and
deleting items) are sent on, unchanged, to the writer process's private unix socket, and its
answer comes back as it is, so a client sees the same status and body whichever process took
its connection (see workers.py). Everything else is answered by the replica itself.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Receive, Scope, Send

__all__ = ["ForwardWrites", "WorkerHeader", "is_write", "WORKER_HEADER"]

# Headers that belong to one connection, not to the request (RFC 9110, 7.6.1), and the length,
# which httpx sets for the body it sends.
_NOT_FORWARDED = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"upgrade", b"te"}


WORKER_HEADER = "x-clipforge-worker"  # which process answered: "writer pid" or "replica pid"


class WorkerHeader:
    """ASGI middleware: every response names the worker that made it (``serve --workers``), so a
    client, a load balancer's log or a test can tell the processes apart."""

    def __init__(self, app: Any, role: str, pid: int) -> None:
        self.app, self.value = app, f"{role} {pid}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (WORKER_HEADER.encode(), self.value)]}
            await send(message)

        await self.app(scope, receive, tagged)


def is_write(method: str, path: str) -> bool:
    """Whether a request changes the index: POST /api/items (add), DELETE /api/items/{id}."""
    return (method == "POST" and path.rstrip("/") == "/api/items") or (method == "DELETE" and path.startswith("/api/items/"))


class ForwardWrites:
    """ASGI middleware of a replica: writes are proxied to the writer at ``socket_path``; when
    the writer does not answer (it is restarting), 503 with a sentence, never a lost write."""

    def __init__(self, app: Any, socket_path: str) -> None:
        self.app, self.socket_path = app, socket_path
        self._client: Any = None  # made in the server's event loop, on the first write

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_write(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        status, headers, content = await self._forward(scope, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _forward(self, scope: Scope, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        import httpx

        if self._client is None:
            transport = httpx.AsyncHTTPTransport(uds=self.socket_path)
            self._client = httpx.AsyncClient(transport=transport, base_url="http://writer", timeout=120)
        path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        # Host and Origin go on as they came: the writer's same-origin check sees the client's.
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _NOT_FORWARDED]
        try:
            response = await self._client.request(scope["method"], path, content=body, headers=headers)
        except httpx.TransportError:
            detail = "the index's writer process is not answering (it may be restarting); send the request again in a moment"
            return 503, [(b"content-type", b"application/json")], json.dumps({"detail": detail}).encode()
        dropped = _NOT_FORWARDED | {WORKER_HEADER.encode()}  # the replica names itself (WorkerHeader)
        kept = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items() if k.encode("latin-1") not in dropped]
        return response.status_code, kept + [(b"content-length", str(len(response.content)).encode())], response.content


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
