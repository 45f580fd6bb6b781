"""Running the service: ``clipforge serve`` in one process, or a writer and read-only replicas
(``--workers``, workers.py)."""

from __future__ import annotations

from pathlib import Path

from ..inference.engine import Precision
from .app import create_app
from .deps import DEFAULT_MAX_ENCODE_ITEMS, DEFAULT_MAX_UPLOAD_BYTES
from .workers import prepare_process, serve_workers

__all__ = ["serve"]


def serve(
    index: str | Path, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
    concepts: str | Path | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    cors_origins: tuple[str, ...] = (), log_level: str = "info", threads: int = 1, batch_queries: bool = True,
    max_encode_items: int = DEFAULT_MAX_ENCODE_ITEMS, precision: Precision | None = None, workers: int = 1,
) -> None:  # fmt: skip
    """Run the service with uvicorn until interrupted: one process (it holds the index's write
    lock) or, with ``workers`` > 1, a writer and read-only replicas on the same port (workers.py).

    ``threads``: torch and FAISS threads per request. The server's parallelism comes from
    concurrent requests; on a busy machine, intra-op thread teams for one small query mostly
    wait for each other (a tiny model's text query: 0.7 ms on one thread, 200 ms on two busy cores).
    With ``batch_queries`` concurrent queries run as micro-batches on one worker thread each (text
    tower, index search), which then uses the ``threads``.
    """
    import sys

    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: serving on {host} without --token: anyone who can reach it can add and delete images", file=sys.stderr)
    if workers > 1:
        serve_workers(index, workers=workers, host=host, port=port, log_level=log_level, threads=threads, token=token,
                      concepts=concepts, max_upload_bytes=max_upload_bytes, cors_origins=cors_origins,
                      batch_queries=batch_queries, max_encode_items=max_encode_items, precision=precision)  # fmt: skip
        return
    prepare_process(threads)
    app = create_app(index, token=token, concepts=concepts, max_upload_bytes=max_upload_bytes, cors_origins=cors_origins,
                     batch_queries=batch_queries, max_encode_items=max_encode_items, precision=precision)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
