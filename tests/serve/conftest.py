"""Fixtures for service tests: the index fixtures of tests/index, a TestClient over the real app,
and real `clipforge serve` processes on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _index_fixtures():
    spec = importlib.util.spec_from_file_location("_index_conftest", Path(__file__).parent.parent / "index" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_shared = _index_fixtures()
helpers, tiny_checkpoint, collection, built_index = _shared.helpers, _shared.tiny_checkpoint, _shared.collection, _shared.built_index

TOKEN = "test-token-123"


@pytest.fixture
def index_copy(built_index, tmp_path) -> Path:
    dest = tmp_path / "idx"
    shutil.copytree(built_index, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


@pytest.fixture
def client(index_copy):
    from fastapi.testclient import TestClient

    from clipforge.serve import create_app

    app = create_app(index_copy, token=TOKEN, max_upload_bytes=2 * 1024 * 1024)
    with TestClient(app, raise_server_exceptions=False) as c:  # a 500 is a response here, so tests can assert on it
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`python -m clipforge serve INDEX` in a subprocess, stopped with SIGTERM."""

    def __init__(self, index: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "clipforge", "serve", str(index), "--port", str(self.port), "--host", "127.0.0.1", *args]
        self.log = index.parent / f"server-{self.port}.log"
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self._wait()

    def _wait(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer /health in {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def live_server():
    servers: list[LiveServer] = []

    def start(index: Path, *args: str, env: dict | None = None) -> LiveServer:
        servers.append(LiveServer(index, *args, env=env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
