"""`clipforge serve --workers N` as real processes on 127.0.0.1: one writer and read-only
replicas on one port; replicas follow the writer's commits and forward writes to it; a killed
worker is started again and nothing committed is lost."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from clipforge.index import IndexStore
from clipforge.index.records import ImageRecord
from clipforge.serve.forward import WORKER_HEADER, is_write

TOKEN = "workers-token"


def png_bytes(helpers, seed: int) -> bytes:
    image, _ = helpers.draw_image(seed)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def roles_answering(url: str, want: set[str], timeout: float = 120) -> dict[str, int]:
    """role -> pid, polling /health over fresh connections until every wanted role answered."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not want <= set(seen):
        try:
            body = httpx.get(url + "/health", timeout=5).json()  # a new connection each time
            seen[body["worker"]] = body["pid"]
        except httpx.HTTPError:
            time.sleep(0.2)
    assert want <= set(seen), f"only {sorted(seen)} answered in {timeout} s"
    return seen


def search_answers(url: str, image_id: int, tries: int = 400) -> dict[str, list[int]]:
    """worker role -> top ids of a search by ``image_id`` (fresh connections) until both roles answered."""
    answers: dict[str, list[int]] = {}
    for _ in range(tries):
        r = httpx.post(url + "/api/search", json={"image_id": image_id, "k": 1}, timeout=30)
        assert r.status_code == 200, r.text
        role = r.headers[WORKER_HEADER].split()[0]
        answers.setdefault(role, []).append(r.json()["results"][0]["id"])
        if len(answers) == 2 and min(len(v) for v in answers.values()) >= 3:
            break
    return answers


def test_a_read_only_store_follows_the_writers_commits(index_copy) -> None:
    """The mechanism replicas rely on, in one process: a read-only searchable store sees the
    writer's adds and deletes at its next search, without reopening."""
    with IndexStore.open(index_copy) as writer:
        reader = IndexStore.open(index_copy, writable=False, searchable=True)
        try:
            vector = np.random.default_rng(0).standard_normal(writer.dim).astype(np.float32)
            vector /= np.linalg.norm(vector)
            assert reader.refresh() is False  # nothing committed since it opened
            rec = ImageRecord(path="uploads/followed.png", folder="uploads", sha256="f" * 64, size=1, width=8, height=8)
            new_id = writer.add([rec], vector[None]).ids[0]
            assert reader.search(vector, 1)[0][0] == new_id  # refreshed before searching
            writer.delete([new_id])
            assert all(i != new_id for i, _ in reader.search(vector, 5))
        finally:
            reader.close()


@pytest.mark.slow
def test_workers_share_the_port_follow_the_writer_and_forward_writes(live_server, index_copy, helpers) -> None:
    server = live_server(index_copy, "--workers", "2", env={"CLIPFORGE_API_TOKEN": TOKEN})
    roles = roles_answering(server.url, {"writer", "replica"})
    assert roles["writer"] != roles["replica"]

    auth = {"Authorization": f"Bearer {TOKEN}"}
    files = {"file": ("new.png", png_bytes(helpers, 4242), "image/png")}
    ids, refused = [], 0
    for _ in range(6):  # several connections: adds reach the writer directly and through the replica
        r = httpx.post(server.url + "/api/items", files=files, headers=auth, timeout=60)
        assert r.status_code in (200, 201), r.text
        ids.append(r.json().get("id") or r.json().get("duplicate_of"))
        refused += httpx.post(server.url + "/api/items", files=files, timeout=60).status_code == 401  # token checked by the writer
    assert len(set(ids)) == 1 and refused == 6
    new_id = ids[0]

    answers = search_answers(server.url, new_id)
    assert set(answers) == {"writer", "replica"}, answers
    assert all(top == new_id for tops in answers.values() for top in tops), answers  # the replica sees the writer's add

    gone = [httpx.delete(f"{server.url}/api/items/{new_id}", headers=auth, timeout=30).status_code for _ in range(4)]
    assert gone[0] == 200 and set(gone[1:]) == {404}, gone  # forwarded or not, one delete happened
    answers = search_answers(server.url, 1)
    assert all(top == 1 for tops in answers.values() for top in tops), answers
    assert "Traceback" not in server.log.read_text()


@pytest.mark.slow
def test_a_killed_worker_is_started_again_and_nothing_committed_is_lost(live_server, index_copy, helpers) -> None:
    server = live_server(index_copy, "--workers", "2", env={"CLIPFORGE_API_TOKEN": TOKEN})
    roles = roles_answering(server.url, {"writer", "replica"})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    added = httpx.post(server.url + "/api/items", files={"file": ("k.png", png_bytes(helpers, 999), "image/png")}, headers=auth, timeout=60)
    assert added.status_code == 201, added.text
    new_id = added.json()["id"]

    os.kill(roles["writer"], signal.SIGKILL)  # the committed add is in SQLite already
    os.kill(roles["replica"], signal.SIGKILL)
    after = roles_answering(server.url, {"writer", "replica"})
    assert after["writer"] != roles["writer"] and after["replica"] != roles["replica"]
    answers = search_answers(server.url, new_id)
    assert all(top == new_id for tops in answers.values() for top in tops), answers
    assert server.stop() in (0, -15)
    assert "starting it again" in server.log.read_text()
    with IndexStore.open(index_copy) as store:
        assert new_id in store.items([new_id])


def test_workers_refuse_an_index_another_process_writes(index_copy) -> None:
    with IndexStore.open(index_copy):  # holds the write lock
        done = subprocess.run([sys.executable, "-m", "clipforge", "serve", str(index_copy), "--workers", "2", "--port", "0"],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "open for writing by another process" in done.stderr and "Traceback" not in done.stderr


def test_which_requests_are_writes() -> None:
    assert is_write("POST", "/api/items") and is_write("DELETE", "/api/items/12")
    assert not is_write("GET", "/api/items/12") and not is_write("POST", "/api/search") and not is_write("POST", "/api/items/12")
