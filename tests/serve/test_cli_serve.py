"""`clipforge serve` and `clipforge index ...` as real processes: token from the environment,
one writer at a time, clean shutdown that leaves FAISS in step with SQLite."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipforge", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_serve_and_index_commands(live_server, index_copy: Path, tmp_path: Path, helpers) -> None:
    server = live_server(index_copy, env={"CLIPFORGE_API_TOKEN": "from-env"})
    image, _ = helpers.draw_image(777)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    files = {"file": ("new.png", buf.getvalue(), "image/png")}
    assert httpx.post(server.url + "/api/items", files=files).status_code == 401
    added = httpx.post(server.url + "/api/items", files=files, headers={"Authorization": "Bearer from-env"})
    assert added.status_code == 201, added.text

    extra = tmp_path / "extra"
    helpers.make_collection(extra, 2, folders=("",), first_seed=5000)
    busy = cli("index", "add", str(index_copy), str(extra), "--workers", "0")
    assert busy.returncode == 2 and "open for writing by another process" in busy.stderr and "Traceback" not in busy.stderr
    assert server.stop() in (0, -15)  # uvicorn shuts down gracefully, then re-raises SIGTERM
    assert "Application shutdown complete" in server.log.read_text()
    import faiss

    assert faiss.read_index(str(index_copy / "vectors.faiss")).ntotal == 37  # flushed at shutdown
    info = json.loads(cli("index", "info", str(index_copy), "--json").stdout)
    assert info["items"] == 37
    done = cli("index", "add", str(index_copy), str(extra), "--workers", "0", "--tag", "extra")
    assert done.returncode == 0 and "added 2" in done.stdout, done.stderr
    new_id = added.json()["id"]
    deleted = cli("index", "delete", str(index_copy), str(new_id), "424242")
    assert deleted.returncode == 0 and "deleted 1 item(s); no such ids: [424242]" in deleted.stdout

    from clipforge.index import IndexStore

    with IndexStore.open(index_copy) as store:
        assert store.count() == 38 and sorted(store.ann.ids().tolist()) == sorted(r[0] for r in store.conn.execute("SELECT id FROM items"))

    missing = cli("index", "info", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no index at" in missing.stderr
    exists = cli("index", "build", str(extra), "--model", str(Path(info["model"])), "--out", str(index_copy))
    assert exists.returncode == 2 and "already holds an index" in exists.stderr
