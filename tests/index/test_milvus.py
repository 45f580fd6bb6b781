"""The Milvus backend against real Milvus Lite: the same items, vectors, top-k and filtered results
as the FAISS store on the same images; add, delete, duplicates; ids never reused; a SIGKILL after
a flush loses nothing; clear errors for an unreachable server, a held file and a dimension mismatch;
the CLI and the service over a Milvus index."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipforge.cli import main as cli_main
from clipforge.errors import DataError, SearchIndexError
from clipforge.index import Condition, IndexStore, MilvusStore, Query, SearchFilter, open_index_searcher
from clipforge.index.backend import add_images_to, index_info_of, open_store
from clipforge.index.records import ImageRecord

def main(argv: list[str]) -> int:
    """The CLI's exit status (it exits through SystemExit when a command succeeds)."""
    try:
        return cli_main(argv)
    except SystemExit as e:
        return int(e.code or 0)


ODD_CAPTION = 'a "quoted" caption: 100% back\\slash under_score'


@pytest.fixture(scope="module")
def pair(tmp_path_factory, built_index: Path, collection: Path, tiny_checkpoint: Path, helpers) -> tuple[Path, Path]:
    """The same images in a FAISS index and in a Milvus Lite one (built through the CLI): the
    collection, then 6 tagged images without captions and one with an awkward caption."""
    root = tmp_path_factory.mktemp("pair")
    extra = root / "extra"
    extra.mkdir()
    for i in range(6):
        helpers.draw_image(500 + i)[0].save(extra / f"x{i}.png")
    helpers.draw_image(600)[0].save(extra / "odd.png")
    (extra / "odd.txt").write_text(ODD_CAPTION + "\n")
    faiss_dir, milvus_dir = root / "faiss", root / "milvus"
    shutil.copytree(built_index, faiss_dir, ignore=shutil.ignore_patterns(".lock"))
    add_images_to(faiss_dir, extra, workers=0, tags=["extra"])
    common = ["--workers", "0", "--batch-size", "16"]
    build = ["index", "build", str(collection), "--model", str(tiny_checkpoint), "--out", str(milvus_dir), "--backend", "milvus"]
    assert main(build + common) == 0
    assert main(["index", "add", str(milvus_dir), str(extra), "--tag", "extra", *common]) == 0
    return faiss_dir, milvus_dir


@pytest.fixture(scope="module")
def stores(pair):
    faiss_dir, milvus_dir = pair
    with IndexStore.open(faiss_dir, writable=False, searchable=True) as f, open_store(milvus_dir, writable=False) as m:
        assert isinstance(m, MilvusStore)
        yield f, m


def records_of(store) -> tuple[list[ImageRecord], np.ndarray]:
    ids, vectors = store.all_vectors()
    items = store.items(ids)
    fields = ("path", "folder", "sha256", "size", "width", "height", "caption", "tags")
    return [ImageRecord(**{f: getattr(items[i], f) for f in fields}) for i in ids], vectors


def ids_of(hits) -> list[int]:
    return [i for i, _ in hits]


def assert_same_hits(milvus_hits, faiss_hits, faiss: IndexStore, query: np.ndarray, atol: float = 1e-5) -> None:
    """The same ranking, scores within atol. The tiny model's cosines crowd near 1, so two items
    can tie to float precision, and then either may come first: where the ids differ, Milvus's must
    score (exactly, from the stored vector) what FAISS's does at that rank."""
    assert len(milvus_hits) == len(faiss_hits)
    np.testing.assert_allclose([s for _, s in milvus_hits], [s for _, s in faiss_hits], atol=atol)
    differ = [(m, s) for (m, _), (f, s) in zip(milvus_hits, faiss_hits) if m != f]
    if differ:
        exact = faiss.vectors([m for m, _ in differ]) @ query  # (len(differ),)
        np.testing.assert_allclose(exact, [s for _, s in differ], atol=atol)
    assert len(differ) <= max(2, len(faiss_hits) // 4)  # ties are a few, not the rule


def test_same_items_vectors_and_top_k_as_the_faiss_store(stores) -> None:
    f, m = stores
    assert m.count() == f.count() == 43
    f_ids, f_vectors = f.all_vectors()
    m_ids, m_vectors = m.all_vectors()
    assert m_ids.tolist() == f_ids.tolist()  # same adds in the same order: the same ids
    np.testing.assert_allclose(m_vectors, f_vectors, atol=1e-6)
    f_items, m_items = f.items(f_ids), m.items(m_ids)
    for i in f_ids.tolist():
        a, b = f_items[i].to_dict(), m_items[i].to_dict()
        assert {k: v for k, v in a.items() if k != "added"} == {k: v for k, v in b.items() if k != "added"}
    rng = np.random.default_rng(0)
    mixed = f_vectors[rng.choice(len(f_vectors), (5, 2))].sum(axis=1)  # (5, dim): between two images
    queries = np.concatenate([f_vectors[::4], mixed / np.linalg.norm(mixed, axis=1, keepdims=True)])
    for q in queries:
        for k in (1, 5, 43, 100):
            mh = m.search(q, k)
            assert len(mh) == min(k, 43)
            assert_same_hits(mh, f.search(q, k), f, q)
    for q, mh in zip(queries, m.search_many(queries, 7)):
        assert_same_hits(mh, f.search(q, 7), f, q)


FILTERS = [
    SearchFilter(folder="animals/cats"),
    SearchFilter(folder=""),
    SearchFilter(tags=("extra",)),
    SearchFilter(tags=("extra", "missing")),
    SearchFilter(where=(Condition("caption", "contains", "circle"),)),
    SearchFilter(where=(Condition("caption", "!=", "a red circle"),)),  # a missing caption matches nothing
    SearchFilter(where=(Condition("caption", "=", ODD_CAPTION),)),  # quotes and a backslash, quoted
    SearchFilter(where=(Condition("caption", "contains", "100% back\\slash"),)),  # % and \ are no wildcards
    SearchFilter(where=(Condition("caption", "contains", "under_score"),)),
    SearchFilter(where=(Condition("folder", "startswith", "animals_"),)),  # '_' is no wildcard: none
    SearchFilter(where=(Condition("folder", "startswith", "animals"),)),
    SearchFilter(where=(Condition("id", "in", [3, 7, 11, 500]),)),
    SearchFilter(where=(Condition("id", "in", []),)),
    SearchFilter(where=(Condition("width", ">=", 64), Condition("id", "<=", 20))),
    SearchFilter(folder="plants", where=(Condition("path", "contains", "img0"), Condition("sha256", ">", "8"))),
    SearchFilter(where=(Condition("caption", "in", [ODD_CAPTION, "no such caption"]),)),
    SearchFilter(where=(Condition("added", ">", float("nan")),)),
]


def describe(flt: SearchFilter) -> str:
    parts = [f"folder={flt.folder!r}"] if flt.folder is not None else []
    parts += [f"tags={list(flt.tags)}"] if flt.tags else []
    return " ".join(parts + [f"{c.field} {c.op} {c.value!r}" for c in flt.where])


@pytest.mark.parametrize("flt", FILTERS, ids=describe)
def test_filters_are_exact_and_return_k_when_k_match(stores, flt: SearchFilter) -> None:
    f, m = stores
    allowed = f.filter_ids(flt)
    assert m.filter_ids(flt).tolist() == sorted(allowed.tolist())
    _, vectors = f.all_vectors()
    for q in vectors[::9]:
        for k in (1, 5, 50):
            mh = m.search(q, k, flt)
            assert len(mh) == min(k, len(allowed)) and set(ids_of(mh)) <= set(allowed.tolist())
            assert_same_hits(mh, f.search(q, k, flt), f, q)


def test_date_filters_match_each_stores_own_times(stores) -> None:
    for store in stores:
        items = store.items(store.all_vectors()[0])
        extra = sorted(i for i, it in items.items() if "extra" in it.tags)
        first_extra = min(items[i].added for i in extra)
        last_base = max(it.added for i, it in items.items() if i not in extra)
        assert store.filter_ids(SearchFilter(added_from=first_extra)).tolist() == extra
        assert len(store.filter_ids(SearchFilter(added_to=last_base))) == 36
        assert len(store.filter_ids(SearchFilter(added_from=float("inf")))) == 0


def test_add_delete_duplicates_and_ids_never_reused(stores, tmp_path: Path) -> None:
    records, vectors = records_of(stores[1])
    m = stores[1]
    root = tmp_path / "m"
    with MilvusStore.create(root, model_ref=m.model_ref, model_config=m.model_config) as s:
        assert s.add(records[:10], vectors[:10]).ids == list(range(1, 11))
        copy = dataclasses.replace(records[11], path="/elsewhere/copy.png")  # same bytes, later in the batch
        result = s.add(records[5:12] + [copy], np.concatenate([vectors[5:12], vectors[11:12]]))
        assert result.ids == [11, 12]
        assert result.duplicates == {**{records[i].path: i + 1 for i in range(5, 10)}, copy.path: 12}
        near = dataclasses.replace(records[3], path="/near.png", sha256="0" * 64)  # new bytes, same picture
        result = s.add([near], vectors[3:4] * 0.999 + vectors[4:5] * 0.001, near_duplicate=0.99)
        assert result.ids == [] and result.near_duplicates["/near.png"][0] == 4
        assert s.add([near], vectors[3:4]).ids == [13]  # no threshold: kept
        unhashed = [dataclasses.replace(records[20 + i], sha256="") for i in range(2)]  # no hash: never a duplicate
        assert s.add(unhashed, vectors[20:22]).ids == [14, 15] and s.items([14])[14].sha256 is None
        assert s.delete([2, 999, 15]) == [2, 15]
        assert s.count() == 13 and 2 not in s.items([1, 2, 3])
        assert 2 not in ids_of(s.search(vectors[1], 13)) and ids_of(s.search(vectors[0], 1)) == [1]
        assert s.delete_paths([records[0].path]) == [1]
        assert s.add(records[30:31], vectors[30:31]).ids == [16]  # 15 was deleted: never handed out again
        with pytest.raises(DataError, match="32-dim"):
            s.add(records[40:41], np.ones((1, 16), np.float32))
        with pytest.raises(SearchIndexError, match="not text"):
            s.search(vectors[0], 3, modality="text")
    with MilvusStore.open(root) as s:  # the Lite server was stopped: this reads the files afresh
        assert s.count() == 13 and s.next_id == 17
        assert s.items([13])[13].path == "/near.png" and ids_of(s.search(vectors[3], 1)) in ([4], [13])
        with pytest.raises(SearchIndexError, match="already open for writing"):
            MilvusStore.open(root)
    with MilvusStore.open(root, writable=False) as s:
        with pytest.raises(SearchIndexError, match="read-only"):
            s.delete([3])


def test_hnsw_kind_still_filters_exactly(stores, tmp_path: Path) -> None:
    f, m = stores
    records, vectors = records_of(m)
    with MilvusStore.create(tmp_path / "h", model_ref=m.model_ref, model_config=m.model_config, kind="hnsw") as s:
        s.add(records, vectors)
        assert s.summary()["kind"] == "hnsw"
        for flt in (SearchFilter(folder="plants"), SearchFilter(tags=("extra",)), None):
            for q in vectors[::7]:
                assert_same_hits(s.search(q, 10, flt), f.search(q, 10, flt), f, q)


KILLED_WRITER = """
import sys, time
import numpy as np
from clipforge.index.milvus import MilvusStore
from clipforge.index.records import ImageRecord

vectors = np.load(sys.argv[2])
records = [ImageRecord(path=f"/img{i}.png", folder="", sha256=f"{i:064x}", size=1, width=1, height=1) for i in range(len(vectors))]
store = MilvusStore.create(sys.argv[1], model_ref="m", model_config={"embed_dim": vectors.shape[1]})
store.add(records[:20], vectors[:20])
store.flush()
store.add(records[20:], vectors[20:])  # after the flush: in Milvus Lite's write-ahead log
print("ready", flush=True)
time.sleep(300)
"""


def test_sigkill_after_a_flush_loses_nothing_committed(stores, tmp_path: Path) -> None:
    _, vectors = stores[1].all_vectors()
    np.save(tmp_path / "v.npy", vectors[:30])
    index = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(index), str(tmp_path / "v.npy")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        with pytest.raises(SearchIndexError, match="another process may have it open"):
            MilvusStore.open(index, writable=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    with MilvusStore.open(index) as store:
        ids, stored = store.all_vectors()
        assert ids.tolist() == list(range(1, 31))
        np.testing.assert_allclose(stored, vectors[:30], atol=1e-6)
        assert [ids_of(store.search(v, 1)) for v in vectors[:30]] == [[i] for i in range(1, 31)]
        new = ImageRecord(path="/new.png", folder="", sha256="f" * 64, size=1, width=1, height=1)
        assert store.add([new], vectors[30:31]).ids == [31]


def test_unreachable_server_is_one_sentence_and_a_cli_exit(tmp_path: Path, collection: Path, tiny_checkpoint: Path, capsys) -> None:
    with pytest.raises(SearchIndexError, match=r"^cannot reach Milvus at http://127\.0\.0\.1:1 "):
        MilvusStore.create(tmp_path / "a", model_ref="m", model_config={"embed_dim": 32}, uri="http://127.0.0.1:1")
    assert not (tmp_path / "a").exists()  # a failed create leaves nothing behind
    out = tmp_path / "b"
    argv = ["index", "build", str(collection), "--model", str(tiny_checkpoint), "--out", str(out), "--backend", "milvus",
            "--milvus-uri", "http://127.0.0.1:1", "--workers", "0"]  # fmt: skip
    assert main(argv) == 2
    assert "cannot reach Milvus at http://127.0.0.1:1" in capsys.readouterr().err
    assert main(["index", "build", str(collection), "--model", str(tiny_checkpoint), "--out", str(out), "--milvus-uri", "x.db"]) == 2
    assert "--milvus-uri and --milvus-collection need --backend milvus" in capsys.readouterr().err
    index = tmp_path / "c"  # an index folder whose server has gone: a fresh process, no traceback
    index.mkdir()
    (index / "milvus.json").write_text(json.dumps({"uri": "http://127.0.0.1:1", "collection": "clipforge"}))
    done = subprocess.run([sys.executable, "-m", "clipforge", "index", "info", str(index)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith("error: cannot reach Milvus at http://127.0.0.1:1") and done.stderr.count("\n") == 1
    with pytest.raises(SearchIndexError, match="neither a Milvus server"):
        MilvusStore.create(tmp_path / "d", model_ref="m", model_config={"embed_dim": 32}, uri=str(tmp_path / "lite"))


def test_dimension_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    lite = str(tmp_path / "shared.db")
    MilvusStore.create(tmp_path / "a", model_ref="m", model_config={"embed_dim": 32}, uri=lite, collection="imgs").close()
    with pytest.raises(SearchIndexError, match="holds 32-dim vectors but this model makes 16-dim ones"):
        MilvusStore.create(tmp_path / "b", model_ref="m", model_config={"embed_dim": 16}, uri=lite, collection="imgs")
    with pytest.raises(SearchIndexError, match="already exists"):
        MilvusStore.create(tmp_path / "c", model_ref="m", model_config={"embed_dim": 32}, uri=lite, collection="imgs")
    with MilvusStore.open(tmp_path / "a") as s:
        assert json.loads((tmp_path / "a" / "milvus.json").read_text())["uri"] == lite  # outside the folder: absolute
        with pytest.raises(DataError, match="32-dim"):
            s.search(np.ones(16, np.float32), 3)
        s.client.upsert(s.info_collection, [{"key": "embed_dim", "value": "16", "vector": [1.0, 0.0]}])  # changed outside clipforge
    with pytest.raises(SearchIndexError, match="holds 32-dim vectors but the index's model makes 16-dim ones"):
        MilvusStore.open(tmp_path / "a")


def test_cli_info_delete_searcher_and_service_over_a_milvus_index(pair, tmp_path: Path, helpers, capsys) -> None:
    import base64
    import io

    from fastapi.testclient import TestClient

    from clipforge.serve import create_app

    faiss_dir, milvus_dir = pair
    assert main(["index", "info", str(milvus_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["items"], info["backend"], info["kind"], info["embed_dim"]) == (43, "milvus", "flat", 32)
    assert index_info_of(milvus_dir)["folders"] == 4
    f_searcher, m_searcher = open_index_searcher(faiss_dir, writable=False), open_index_searcher(milvus_dir, writable=False)
    try:
        for text in ("a red circle", "a blue square on a white background"):
            want = [r.item.path for r in f_searcher.search(Query(text=text), k=5)]
            assert [r.item.path for r in m_searcher.search(Query(text=text), k=5)] == want
    finally:
        f_searcher.close()
        m_searcher.close()
    copy = tmp_path / "copy"  # the service writes: a copy, as the other tests share this index
    shutil.copytree(milvus_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    buf = io.BytesIO()
    helpers.draw_image(4242)[0].save(buf, "PNG")
    files = {"file": ("new.png", buf.getvalue(), "image/png")}
    app = create_app(copy, token="t", searcher=open_index_searcher(copy))  # the service, unchanged, over Milvus
    with TestClient(app) as client:
        auth = {"Authorization": "Bearer t"}
        assert client.get("/health").json()["items"] == 43 and client.get("/api/info").json()["kind"] == "flat"
        found = client.post("/api/search", json={"text": "a red circle", "k": 3, "filters": {"tags": ["extra"]}}).json()["results"]
        assert len(found) == 3 and all(r["tags"] == ["extra"] for r in found)
        new_id = client.post("/api/items", files=files, data={"tags": "up"}, headers=auth).json()["id"]
        assert new_id == 44 and client.post("/api/items", files=files, headers=auth).json()["duplicate_of"] == 44
        query = {"image_base64": base64.b64encode(buf.getvalue()).decode(), "k": 1, "filters": {"tags": ["up"]}}
        assert client.post("/api/search", json=query).json()["results"][0]["id"] == 44
        assert client.delete("/api/items/44", headers=auth).json() == {"deleted": [44]}
        assert not list((copy / "files").rglob("*.png"))  # the uploaded file went with its item
    assert main(["index", "delete", str(copy), "43", "999"]) == 0
    assert "deleted 1 item(s); no such ids: [999]" in capsys.readouterr().out
    assert index_info_of(copy)["items"] == 42
