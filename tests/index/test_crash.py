"""An `index add` killed with SIGKILL mid-way loses nothing it committed, and the index opens
consistent: every id in SQLite is in FAISS and searchable, and FAISS holds nothing else."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipforge.index import IndexStore, add_images, build_index, index_info


def committed(index: Path) -> int:
    try:
        with sqlite3.connect(f"file:{index / 'meta.sqlite'}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:  # the writer holds a lock for a moment
        return -1


@pytest.mark.slow
def test_sigkill_during_add_loses_nothing_committed(tmp_path: Path, tiny_checkpoint: Path, helpers) -> None:
    first, rest = tmp_path / "first", tmp_path / "rest"
    helpers.make_collection(first, 5, first_seed=10_000)
    paths = helpers.make_collection(rest, 600, folders=("a", "b"))
    index = tmp_path / "idx"
    build_index(first, str(tiny_checkpoint), index, workers=0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipforge", "index", "add", str(index), str(rest), "--batch-size", "4", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    before = 0
    while time.monotonic() < deadline and proc.poll() is None:
        before = max(before, committed(index))
        if before >= 5 + 60:  # several batches committed, most still to come
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"add finished or failed before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()

    assert index_info(index)["items"] >= before  # a reader first: it may have to recover the WAL
    with IndexStore.open(index) as store:  # takes the lock the dead process held; reconciles
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        sql_ids = sorted(r[0] for r in store.conn.execute("SELECT id FROM items"))
        assert len(sql_ids) >= before and len(sql_ids) < 605
        assert sorted(store.ann.ids().tolist()) == sql_ids  # FAISS holds exactly SQLite's ids
        vectors = store.vectors(sql_ids)
        for item_id, vector in zip(sql_ids, vectors):
            assert item_id in [i for i, _ in store.search(vector, 3)]
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    report = add_images(index, rest, workers=0)  # re-running resumes: nothing twice
    assert report.total == 605 and report.duplicates == len(sql_ids) - 5
    with IndexStore.open(index) as store:
        assert store.ann.ntotal == 605 and len({r[0] for r in store.conn.execute("SELECT path FROM items")}) == 605
    assert len(paths) == 600
