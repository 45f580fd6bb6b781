"""The index on disk: build, metadata, image queries, duplicates, add/delete, exact filters,
IVF recall and filtering, reconciliation of FAISS with SQLite, locking."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipforge.errors import DataError, SearchIndexError
from clipforge.index import Condition, IndexStore, Query, SearchFilter, add_images, build_index, delete_items, index_info, open_searcher
from clipforge.index.records import ImageRecord



def sql_rows(index: Path, query: str, params=()) -> list[tuple]:
    with sqlite3.connect(index / "meta.sqlite") as conn:
        return conn.execute(query, params).fetchall()


def test_build_stores_metadata_model_and_vectors(built_index: Path, collection: Path, tiny_checkpoint: Path) -> None:
    info = index_info(built_index)
    assert info["items"] == 36 and info["embed_dim"] == 32 and info["kind"] == "flat"
    assert info["model"] == str(tiny_checkpoint.resolve())
    path = collection / "animals" / "cats" / "img001.png"
    (row,) = sql_rows(built_index, "SELECT folder, caption, sha256, size, width, height, tags FROM items WHERE path = ?", (str(path.resolve()),))
    data = path.read_bytes()
    assert row == ("animals/cats", path.with_suffix(".txt").read_text().strip(), hashlib.sha256(data).hexdigest(),
                   len(data), 64, 56, "[]")  # fmt: skip
    config = json.loads(sql_rows(built_index, "SELECT value FROM info WHERE key = 'model_config'")[0][0])
    assert config["embed_dim"] == 32 and config["vision_cfg"]["image_size"] == 32
    assert sql_rows(built_index, "SELECT count(*) FROM vectors")[0][0] == 36


def test_every_image_finds_itself_and_its_reencoded_copy_first(built_index: Path, collection: Path, helpers) -> None:
    searcher = open_searcher(built_index)
    try:
        for path in sorted(collection.rglob("*.png"))[::3]:
            exact = searcher.search(Query(image=path.read_bytes()), k=3)
            assert Path(exact[0].item.path) == path.resolve() and exact[0].score == pytest.approx(1.0, abs=1e-5)
            near = searcher.search(Query(image=helpers.perturbed_copy(path)), k=3)
            assert Path(near[0].item.path) == path.resolve()
            assert [r.score for r in near] == sorted((r.score for r in near), reverse=True)
    finally:
        searcher.store.close()


def test_combined_query_is_the_normalised_weighted_sum(index_copy: Path) -> None:
    searcher = open_searcher(index_copy)
    try:
        image = searcher.store.vectors([5])[0]
        text = searcher.embedder.text("a red circle")
        combined = searcher.query_vector(Query(text="a red circle", image_id=5, text_weight=0.3, image_weight=0.7))
        expected = 0.3 * text + 0.7 * image
        np.testing.assert_allclose(combined, expected / np.linalg.norm(expected), atol=1e-5)
        only_image = searcher.search(Query(text="a red circle", image_id=5, text_weight=0.0), k=1)
        assert only_image[0].item.id == 5
        with pytest.raises(DataError, match="empty query"):
            searcher.search(Query(text=""), k=1)
    finally:
        searcher.store.close()


def test_add_skips_exact_duplicates_and_resumes(index_copy: Path, collection: Path, tmp_path: Path, helpers) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(collection / "plants" / "img002.png", extra / "same-bytes.png")  # already indexed
    helpers.draw_image(1000)[0].save(extra / "new.png")
    (extra / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    report = add_images(index_copy, extra, workers=0, tags=["batch2"])
    assert (report.added, report.duplicates, report.total) == (1, 1, 37)
    assert list(report.unreadable) == [str(extra / "broken.png")] and "not a readable image" in report.unreadable[str(extra / "broken.png")]
    assert sql_rows(index_copy, "SELECT tags FROM items WHERE path LIKE '%new.png'") == [('["batch2"]',)]
    again = add_images(index_copy, extra, workers=0)
    assert (again.added, again.duplicates, again.total) == (0, 2, 37)


def test_near_duplicates_are_skipped_at_the_threshold(index_copy: Path, collection: Path, tmp_path: Path, helpers) -> None:
    extra = tmp_path / "near"
    extra.mkdir()
    (extra / "copy.jpg").write_bytes(helpers.perturbed_copy(collection / "plants" / "img002.png"))
    original = sql_rows(index_copy, "SELECT id FROM items WHERE path LIKE '%plants/img002.png'")[0][0]
    report = add_images(index_copy, extra, workers=0, near_duplicate=0.999)
    assert report.added == 0 and report.near_duplicates == 1 and report.total == 36
    with IndexStore.open(index_copy) as store:
        vector = store.vectors([original])[0]
        kept = store.add([ImageRecord("x", "", "f" * 64, 1, 1, 1)], vector[None], near_duplicate=0.99)
        assert kept.ids == [] and kept.near_duplicates["x"][0] == original
        assert kept.near_duplicates["x"][1] == pytest.approx(1.0, abs=1e-5)
    report = add_images(index_copy, extra, workers=0)  # no threshold: different bytes, so added
    assert report.added == 1 and report.total == 37


def test_delete_removes_from_search_metadata_and_disk_state(index_copy: Path, collection: Path) -> None:
    target = collection / "animals" / "img000.png"
    target_id = sql_rows(index_copy, "SELECT id FROM items WHERE path = ?", (str(target.resolve()),))[0][0]
    assert delete_items(index_copy, [target_id, 10**9]) == [target_id]
    assert target.exists()  # the user's own file is never deleted
    searcher = open_searcher(index_copy)
    try:
        hits = searcher.search(Query(image=target.read_bytes()), k=36)
        assert target_id not in [h.item.id for h in hits] and len(hits) == 35
        assert searcher.store.ann.ntotal == 35 and searcher.store.count() == 35
    finally:
        searcher.store.close()
    # ids are never reused: a re-added image gets a new one
    report = add_images(index_copy, target, workers=0)
    assert report.added == 1
    new_id = sql_rows(index_copy, "SELECT id FROM items WHERE path = ?", (str(target.resolve()),))[0][0]
    assert new_id > 36


def brute_force(store: IndexStore, query: np.ndarray, where: str, params=()) -> list[int]:
    ids = [r[0] for r in store.conn.execute(f"SELECT id FROM items {where}", params)]
    scores = store.vectors(ids) @ query
    return [ids[i] for i in np.argsort(-scores, kind="stable")]


@pytest.mark.parametrize(
    "flt, where, params",
    [
        (SearchFilter(folder="animals/cats"), "WHERE folder = ?", ("animals/cats",)),
        (SearchFilter(where=(Condition("folder", "startswith", "animals"),)), "WHERE folder LIKE 'animals%'", ()),
        (SearchFilter(where=(Condition("caption", "contains", "circle"), Condition("id", "<=", 20))),
         "WHERE caption LIKE '%circle%' AND id <= 20", ()),
        (SearchFilter(where=(Condition("id", "in", [3, 7, 11, 500]),)), "WHERE id IN (3, 7, 11)", ()),
        (SearchFilter(where=(Condition("width", "!=", 64),)), "WHERE 0", ()),
    ],
)  # fmt: skip
def test_filters_are_exact_and_return_k_when_k_match(built_index: Path, flt, where, params) -> None:
    searcher = open_searcher(built_index)
    try:
        query = searcher.embedder.text("a blue square")
        truth = brute_force(searcher.store, query, where, params)
        for k in (1, 5, len(truth), len(truth) + 5):
            got = [r.item.id for r in searcher.search_vector(query, k, flt)]
            assert got == truth[:k]
    finally:
        searcher.store.close()


def test_tag_and_date_filters(index_copy: Path, tmp_path: Path) -> None:
    with IndexStore.open(index_copy) as store:
        vector = store.vectors([1])[0]
        first = store.add([ImageRecord("a", "tagged", "a" * 64, 1, 1, 1, tags=("holiday", "beach"))], vector[None]).ids[0]
        second = store.add([ImageRecord("b", "tagged", "b" * 64, 1, 1, 1, tags=("holiday",))], vector[None]).ids[0]
        added = dict(store.conn.execute("SELECT id, added FROM items WHERE folder = 'tagged'").fetchall())
        hits = store.search(vector, 10, SearchFilter(tags=("holiday",)))
        assert sorted(i for i, _ in hits) == [first, second]
        assert [i for i, _ in store.search(vector, 10, SearchFilter(tags=("holiday", "beach")))] == [first]
        assert [i for i, _ in store.search(vector, 10, SearchFilter(added_from=added[second]))] == [second]
        before = store.search(vector, 100, SearchFilter(added_to=added[first]))
        assert second not in [i for i, _ in before] and first in [i for i, _ in before] and len(before) == 37


def test_bad_filters_are_clear_errors() -> None:
    with pytest.raises(DataError, match="unknown filter field"):
        Condition("vector", "=", 1)
    with pytest.raises(DataError, match="unknown filter operator"):
        Condition("id", "like", 1)
    with pytest.raises(DataError, match="integer"):
        Condition("width", ">", "wide")
    from clipforge.index.filters import parse_time

    assert parse_time("1970-01-02") == 86400.0
    with pytest.raises(DataError, match="ISO 8601"):
        parse_time("next tuesday")


def clustered(n: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_store(root: Path, vectors: np.ndarray, folders: int = 10, kind: str = "ivf") -> IndexStore:
    config = {"embed_dim": vectors.shape[1]}
    store = IndexStore.create(root, model_ref="synthetic", model_config=config, kind=kind)
    records = [ImageRecord(f"v{i}", f"f{i % folders}", hashlib.sha256(str(i).encode()).hexdigest(), 1, 1, 1) for i in range(len(vectors))]
    store.add(records, vectors)
    store.optimize()
    return store


def test_ivf_reaches_target_recall_filters_exactly_and_deletes(tmp_path: Path) -> None:
    from clipforge.index.calibration import exact_top_k, recall_at_k

    points = clustered(20_200, 32, 64)
    vectors, queries = points[:20_000], points[20_000:]  # queries: fresh points, same distribution
    store = synthetic_store(tmp_path / "ivf", vectors)
    try:
        assert store.ann.kind == "ivf" and store.ann.nlist >= 64
        assert float(store.info["calibrated_recall"]) >= 0.95
        ids = store.ann.ids()
        truth = np.sort(ids)[exact_top_k(vectors, queries, 10)]  # rows were inserted in id order
        found = np.stack([[i for i, _ in store.search(q, 10)] for q in queries])
        assert recall_at_k(found, truth) >= 0.95
        # a small filtered subset (exact path) and a large one (IVF + selector) both give k exact matches
        store.exact_subset = 5_000
        for flt, n_match in [(SearchFilter(folder="f3"), 2000), (SearchFilter(where=(Condition("folder", "!=", "f3"),)), 18000)]:
            hits = store.search(queries[0], 50, flt)
            allowed = set(store.filter_ids(flt).tolist())
            assert len(allowed) == n_match and len(hits) == 50 and {i for i, _ in hits} <= allowed
        tiny = SearchFilter(where=(Condition("id", "in", [5, 17_000]),))
        assert sorted(i for i, _ in store.search(queries[0], 10, tiny)) == [5, 17_000]
        best = store.search(queries[0], 1)[0][0]
        store.delete([best])
        assert best not in [i for i, _ in store.search(queries[0], 20)] and store.ann.ntotal == 19_999
    finally:
        store.close()


def test_index_kind_follows_size_unless_forced(tmp_path: Path) -> None:
    from clipforge.index.ann import nlist_for
    from clipforge.index.choose import choose_kind

    assert choose_kind(49_999) == "flat" and choose_kind(50_000) == "ivf" and choose_kind(10, "ivf") == "ivf"
    with pytest.raises(SearchIndexError, match="unknown index kind"):
        choose_kind(10, "hnsw")
    assert nlist_for(1_000_000) == 4096 and nlist_for(50_000) == 1024
    store = synthetic_store(tmp_path / "small", clustered(500, 16, 8), kind="auto")
    try:
        assert store.ann.kind == "flat"
    finally:
        store.close()


def test_faiss_file_lagging_or_corrupt_is_reconciled_on_open(index_copy: Path) -> None:
    faiss_file = index_copy / IndexStore.FAISS
    stale = faiss_file.read_bytes()  # FAISS as of 36 items
    with IndexStore.open(index_copy) as store:
        vector = store.vectors([3])[0]
        new_id = store.add([ImageRecord("n", "", "c" * 64, 1, 1, 1)], vector[None]).ids[0]
        store.delete([7])
    faiss_file.write_bytes(stale)  # as if killed before the FAISS file was rewritten
    with IndexStore.open(index_copy) as store:
        assert set(store.ann.ids().tolist()) == {r[0] for r in store.conn.execute("SELECT id FROM items")}
        assert new_id in store.ann.ids() and 7 not in store.ann.ids()
    faiss_file.write_bytes(stale[: len(stale) // 2])  # truncated: rebuilt from SQLite
    with IndexStore.open(index_copy) as store:
        assert store.ann.ntotal == 36 and new_id in store.ann.ids()


def test_one_writer_at_a_time_and_clear_open_errors(index_copy: Path, tmp_path: Path) -> None:
    with IndexStore.open(index_copy):
        with pytest.raises(SearchIndexError, match="already open for writing in this process"):
            IndexStore.open(index_copy)
        assert index_info(index_copy)["items"] == 36  # readers are welcome
    with pytest.raises(SearchIndexError, match="no index at"):
        IndexStore.open(tmp_path / "nothing")
    with pytest.raises(SearchIndexError, match="already holds an index"):
        IndexStore.create(index_copy, model_ref="x", model_config={"embed_dim": 4})


def test_query_model_must_match_the_index(index_copy: Path, tmp_path: Path) -> None:
    import clipforge
    from clipforge.index.embedder import load_embedder
    from clipforge.index.search import check_model

    other = clipforge.save(clipforge.create_model("tiny-rn", seed=0), tmp_path / "rn.safetensors")
    with IndexStore.open(index_copy) as store:
        with pytest.raises(SearchIndexError, match="differs from the one this index was built with"):
            check_model(store, load_embedder(str(other)))
    with pytest.raises(SearchIndexError, match="names an architecture, not weights"):
        build_index(index_copy, "tiny-vit", tmp_path / "new")


def test_unreadable_images_never_stop_a_build(tmp_path: Path, tiny_checkpoint: Path, helpers) -> None:
    src = tmp_path / "src"
    helpers.make_collection(src, 4, folders=("",))
    (src / "empty.png").write_bytes(b"")
    (src / "cut.png").write_bytes((src / "img000.png").read_bytes()[:60])
    Image.new("RGB", (8, 8)).save(src / "fine.gif")
    report = build_index(src, str(tiny_checkpoint), tmp_path / "idx", workers=0)
    assert report.added == 5 and set(Path(p).name for p in report.unreadable) == {"empty.png", "cut.png"}
    assert "empty file" in report.unreadable[str(src / "empty.png")]


def test_read_only_searchers_search_beside_the_writer_and_cannot_write(index_copy: Path) -> None:
    writer = open_searcher(index_copy)
    try:
        expected = writer.search(Query(text="a red circle"), k=5)
        (index_copy / IndexStore.FAISS).unlink()  # a reader builds FAISS in memory, writes nothing
        readers = [open_searcher(index_copy, writable=False) for _ in range(2)]
        try:
            for reader in readers:
                got = reader.search(Query(text="a red circle"), k=5)
                assert [(r.item.id, round(r.score, 5)) for r in got] == [(r.item.id, round(r.score, 5)) for r in expected]
                with pytest.raises(SearchIndexError, match="read-only"):
                    reader.store.delete([expected[0].item.id])
            assert not (index_copy / IndexStore.FAISS).exists()
        finally:
            for reader in readers:
                reader.store.close()
    finally:
        writer.store.close()


def test_index_info_command_imports_neither_torch_nor_faiss(built_index: Path) -> None:
    import subprocess
    import sys

    probe = ("import sys\nfrom clipforge.cli import app\n"
             "try:\n    app(args=['index', 'info', sys.argv[1], '--json'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "heavy = sorted(m for m in ('torch', 'faiss', 'fastapi') if m in sys.modules)\n"
             "print('HEAVY', heavy)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe, str(built_index)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"items": 36' in done.stdout
    assert "HEAVY []" in done.stdout
