"""``clipforge serve --workers N``: one writer process and N - 1 read-only replicas on one port.

Why processes: most of a query's CPU is Python (HTTP parsing, JSON, validation, the searcher's
bookkeeping) under one interpreter lock, so threads cannot spread it over cores; processes can.
All workers accept connections from one listening socket that this (supervisor) process opens
and hands down, so the kernel gives each new connection to whichever worker is free, as in
gunicorn and uvicorn's own ``--workers``. uvicorn's supervisor is not used because its workers
are all alike and ours are not:

- worker 0, the writer, opens the index writable (it holds the index's write lock) and also
  listens on a private unix socket;
- the replicas open it read-only: ``IndexStore`` follows the writer's commits (SQLite's
  ``data_version``, checked before each search, then FAISS reconciled in memory), and the
  requests that change the index are forwarded to the writer's socket (forward.py).

A worker that dies is started again; what was committed is in SQLite (synchronous commits), so
no committed item is lost whichever process is killed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["WorkerSpec", "serve_workers", "prepare_process", "WRITER", "REPLICA"]

WRITER, REPLICA = "writer", "replica"
_RESTART_PAUSE_S = 1.0  # a worker that dies at start is not restarted in a tight loop
_EARLY_DEATHS = 3  # a worker that dies this many times in a row within _EARLY_S of its start stops the service
_EARLY_S = 20.0


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process needs (sent to a spawned process: plain data only)."""

    index: str
    role: str
    writer_socket: str
    log_level: str = "warning"
    threads: int = 1
    app_options: dict[str, Any] = field(default_factory=dict)


def serve_workers(
    index: str | Path, *, workers: int, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
    threads: int = 1, **app_options: Any,
) -> None:  # fmt: skip
    """Run ``workers`` processes (1 writer + replicas) on ``host:port`` until SIGINT/SIGTERM.
    ``app_options``: create_app's keyword arguments (token, concepts, limits, batching...)."""
    if workers < 2:
        raise DataError(f"--workers must be at least 2 for a writer and replicas (got {workers}); leave it out for one process")
    _check_index(index)
    listener = socket.create_server((host, port), backlog=2048)
    run_dir = tempfile.mkdtemp(prefix="clipforge-serve-")
    writer_socket = os.path.join(run_dir, "writer.sock")
    specs = [WorkerSpec(str(index), WRITER if i == 0 else REPLICA, writer_socket, log_level, threads, app_options)
             for i in range(workers)]  # fmt: skip
    print(f"clipforge serve: {workers} workers (1 writer, {workers - 1} read-only) on http://{host}:{port}", file=sys.stderr)
    try:
        _supervise(specs, listener)
    finally:
        listener.close()
        Path(writer_socket).unlink(missing_ok=True)
        os.rmdir(run_dir)


def _check_index(index: str | Path) -> None:
    """A missing or damaged index, or one another process writes, fails here in one sentence
    rather than in a worker started again and again."""
    from ..index.lock import WriteLock
    from ..index.store import IndexStore

    IndexStore.open(index, writable=False).close()
    WriteLock.take(Path(index) / IndexStore.LOCK).release()


def _supervise(specs: list[WorkerSpec], listener: socket.socket) -> None:
    """Start every worker, start again any that dies, stop them all on SIGINT/SIGTERM."""
    context = multiprocessing.get_context("spawn")  # no fork after torch and FAISS threads exist
    stopping = []
    previous = {s: signal.signal(s, lambda *_: stopping.append(True)) for s in (signal.SIGINT, signal.SIGTERM)}
    processes: list[Any] = [None] * len(specs)
    started, early = [0.0] * len(specs), [0] * len(specs)
    try:
        while not stopping:
            for i, spec in enumerate(specs):
                proc = processes[i]
                if proc is not None and proc.is_alive():
                    continue
                if proc is not None:
                    early[i] = early[i] + 1 if time.monotonic() - started[i] < _EARLY_S else 0
                    if early[i] >= _EARLY_DEATHS:
                        raise DataError(f"the {spec.role} worker failed {early[i]} times right after starting (its error is above); the service stops")
                    print(f"clipforge serve: {spec.role} worker {i} (pid {proc.pid}) exited with {proc.exitcode}; starting it again", file=sys.stderr)
                processes[i] = context.Process(target=_run_worker, args=(spec, listener), name=f"clipforge-{spec.role}-{i}", daemon=True)
                processes[i].start()
                started[i] = time.monotonic()
            time.sleep(_RESTART_PAUSE_S)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop(processes)


def _stop(processes: list[Any]) -> None:
    for proc in processes:
        if proc is not None and proc.is_alive():
            proc.terminate()  # SIGTERM: uvicorn finishes the requests in flight
    for proc in processes:
        if proc is not None:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _run_worker(spec: WorkerSpec, listener: socket.socket) -> None:
    """One worker: open the index (writable or following the writer), serve until SIGTERM."""
    import uvicorn

    from ..index.search import open_searcher
    from .app import create_app

    prepare_process(spec.threads)
    writer = spec.role == WRITER
    searcher = open_searcher(spec.index, concepts=spec.app_options.get("concepts"), writable=writer)
    app = create_app(spec.index, searcher=searcher, role=spec.role,
                     forward_writes_to=None if writer else spec.writer_socket, **spec.app_options)  # fmt: skip
    sockets = [listener]
    if writer:
        sockets.append(_unix_listener(spec.writer_socket))
    server = uvicorn.Server(uvicorn.Config(app, log_level=spec.log_level, timeout_graceful_shutdown=5))
    server.run(sockets=sockets)


def _unix_listener(path: str) -> socket.socket:
    """The writer's private socket (a restarted writer replaces its predecessor's file)."""
    Path(path).unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)  # only this user's processes may send writes past the token check's socket
    sock.listen(512)
    return sock


def prepare_process(threads: int) -> None:
    """Set up a process that serves: ``threads`` torch and FAISS threads per request, and
    malloc keeping freed activation memory for the next request."""
    import faiss
    import torch

    from ..inference.allocator import keep_freed_memory

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    keep_freed_memory()
