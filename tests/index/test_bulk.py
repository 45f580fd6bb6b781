"""Indexes built from precomputed embeddings (``index build --from-embeddings``): the output of
``clipforge embed`` and clip-retrieval's layout, image / text / combined indexes, the compressed
kind re-ranked from the shards on disk, add/delete after the build, damaged shards, resume."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clipforge.cli import main
from clipforge.errors import SearchIndexError
from clipforge.index import IndexStore, Query, SearchFilter, build_from_embeddings, index_info, open_searcher
from clipforge.index.calibration import exact_top_k, recall_at_k
from clipforge.index.choose import load_index
from clipforge.index.filters import Condition
from clipforge.index.records import ImageRecord


def write_clip_retrieval(root: Path, image: np.ndarray | None, text: np.ndarray | None, shard_rows: int,
                         captions: list[str] | None = None, dtype: str = "float16") -> Path:  # fmt: skip
    """clip-retrieval's inference output: img_emb/img_emb_{i}.npy (unpadded i), text_emb/, metadata/."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(image if image is not None else text)
    captions = captions or [f"caption {j}" for j in range(n)]
    for i, start in enumerate(range(0, n, shard_rows)):
        rows = range(start, min(n, start + shard_rows))
        for name, vectors in (("img_emb", image), ("text_emb", text)):
            if vectors is not None:
                (root / name).mkdir(parents=True, exist_ok=True)
                np.save(root / name / f"{name}_{i}.npy", vectors[start : start + shard_rows].astype(dtype))
        (root / "metadata").mkdir(parents=True, exist_ok=True)
        table = {"image_path": [f"/data/{j}.jpg" for j in rows], "caption": [captions[j] for j in rows],
                 "url": [f"https://example.org/{j}.jpg" for j in rows]}  # fmt: skip
        pq.write_table(pa.table(table), root / "metadata" / f"metadata_{i}.parquet")
    return root


def clustered(n: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cli(argv: list[str]) -> int:
    """The exit status of ``clipforge ARGV`` (click exits on success; our errors return 2)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    from clipforge.index.embedder import load_embedder

    return load_embedder(str(tiny_checkpoint))


def test_embed_output_builds_the_same_index_as_the_images(tmp_path, collection, tiny_checkpoint, built_index, embedder) -> None:
    from clipforge.inference.stream import embed_collection

    emb = tmp_path / "emb"  # several shards; the same engine and batches as build_index's
    embed_collection(embedder.engine, embedder.preprocess, collection, emb, shard_size=10, batch_size=16, workers=0,
                     model_ref=str(tiny_checkpoint))  # fmt: skip
    report = build_from_embeddings(emb, tmp_path / "idx")  # the model: the one the manifest names
    assert (report.added, report.total, report.kind) == (36, 36, "flat")
    with IndexStore.open(built_index, writable=False, searchable=True) as a, IndexStore.open(tmp_path / "idx", writable=False, searchable=True) as b:
        assert b.model_ref == a.model_ref and b.model_config == a.model_config
        assert b.summary()["vectors_in_shards"] == 36 and b.summary()["shards"] == 4
        ids = a.db.ids().tolist()
        assert b.db.ids().tolist() == ids
        fields = lambda item: (item.path, item.folder, item.caption, item.sha256, item.size, item.width, item.height)  # noqa: E731
        items_a, items_b = a.items(ids), b.items(ids)
        assert [fields(items_b[i]) for i in ids] == [fields(items_a[i]) for i in ids]
        np.testing.assert_allclose(b.vectors(ids), a.vectors(ids), atol=1e-6)
        for query in [embedder.text("a red circle"), embedder.text("a green square"), *a.vectors([3, 20])]:
            hits_a, hits_b = a.search(query, 10), b.search(query, 10)
            assert [i for i, _ in hits_b] == [i for i, _ in hits_a]
            np.testing.assert_allclose([s for _, s in hits_b], [s for _, s in hits_a], atol=1e-5)
        expected = [i for i, _ in a.search(embedder.text("a blue square"), 5)]
    searcher = open_searcher(tmp_path / "idx", writable=False)  # text queries through the usual API
    try:
        assert [r.item.id for r in searcher.search(Query(text="a blue square"), k=5)] == expected
    finally:
        searcher.store.close()


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory, collection, embedder) -> tuple[Path, np.ndarray, np.ndarray, list[str]]:
    """A clip-retrieval folder of the collection: image and caption embeddings of the tiny model,
    shards 0..11 of 3 rows (so numeric order, 2 < 10, matters)."""
    paths = sorted(collection.rglob("*.png"))
    from PIL import Image

    images = embedder.images([Image.open(p).convert("RGB") for p in paths])
    captions = [p.with_suffix(".txt").read_text().strip() for p in paths]
    texts = embedder.texts(captions)
    root = write_clip_retrieval(tmp_path_factory.mktemp("cr") / "emb", images, texts, shard_rows=3, captions=captions)
    return root, images.astype(np.float16).astype(np.float32), texts.astype(np.float16).astype(np.float32), captions


def test_clip_retrieval_folder_text_and_combined_indexes_answer_text_queries(tmp_path, caption_folder, tiny_checkpoint, embedder) -> None:
    root, images, texts, captions = caption_folder
    combined, text_only = tmp_path / "both", tmp_path / "text"
    assert cli(["index", "build", "--from-embeddings", str(root), "--out", str(combined), "--model", str(tiny_checkpoint)]) == 0
    build_from_embeddings(root, text_only, model=str(tiny_checkpoint), modality="text")
    query = "a red circle on a blue background"
    vector = embedder.text(query)
    for index, modalities in ((combined, ["image", "text"]), (text_only, ["text"])):
        info = index_info(index)
        assert info["items"] == 36 and info["modalities"] == modalities and info["kind"] == "flat"
        searcher = open_searcher(index, writable=False)
        try:
            item = searcher.store.items([11])[11]  # row 2 of shard 3 (shard "10" sorts after "3")
            assert (item.caption, item.url, item.path) == (captions[10], "https://example.org/10.jpg", "/data/10.jpg")
            for modality, vectors in (("text", texts), ("image", images)):
                if modality not in modalities:
                    with pytest.raises(Exception, match="holds text embeddings, not image"):
                        searcher.search(Query(text=query), k=5, modality=modality)
                    continue
                got = searcher.search(Query(text=query), k=5, modality=modality)
                best = np.argsort(-(vectors @ vector), kind="stable")[:5] + 1
                assert [r.item.id for r in got] == best.tolist()
                np.testing.assert_allclose([r.score for r in got], np.sort(vectors @ vector)[::-1][:5], atol=1e-5)
            flt = SearchFilter(where=(Condition("url", "contains", "/1"),))  # exact filters on any modality
            got = searcher.search(Query(text=query), k=3, flt=flt, modality="text")
            assert got and all("/1" in r.item.url for r in got)
        finally:
            searcher.store.close()
        served_modalities_answer(index, modalities, texts, vector)


def served_modalities_answer(index: Path, modalities: list[str], texts: np.ndarray, vector: np.ndarray) -> None:
    """/api/search and clip-retrieval's /knn-service search the caption embeddings with
    modality "text" and refuse a modality the index lacks with a 4xx."""
    from fastapi.testclient import TestClient

    from clipforge.serve import create_app

    best = (np.argsort(-(texts @ vector), kind="stable")[:3] + 1).tolist()
    with TestClient(create_app(index)) as client:
        api = client.post("/api/search", json={"text": "a red circle on a blue background", "k": 3, "modality": "text"})
        knn = client.post("/knn-service", json={"text": "a red circle on a blue background", "modality": "text",
                                                "num_images": 3, "indice_name": index.name})  # fmt: skip
        assert api.status_code == 200 and [r["id"] for r in api.json()["results"]] == best
        assert knn.status_code == 200 and [r["id"] for r in knn.json()] == best
        if "image" not in modalities:
            refused = client.post("/knn-service", json={"text": "x", "modality": "image", "num_images": 3, "indice_name": index.name})
            assert refused.status_code == 422 and "holds text embeddings" in refused.text
            assert client.post("/api/search", json={"text": "x", "modality": "image"}).status_code in (400, 422)


def test_compressed_index_rerank_recall_add_delete_reopen(tmp_path) -> None:
    points = clustered(20_300, 32, 200)
    data, queries = points[:20_000], points[20_000:]
    root = write_clip_retrieval(tmp_path / "emb", data, None, shard_rows=6_000)
    build_from_embeddings(root, tmp_path / "idx", kind="ivfpq")
    stored = data.astype(np.float16).astype(np.float32)  # what the shards hold
    with IndexStore.open(tmp_path / "idx") as store:
        assert store.ann.kind == "ivfpq" and "PQ" in store.summary()["factory"]
        assert float(store.info["calibrated_recall"]) >= 0.95
        hits = [store.search(q, 10) for q in queries]
        truth = exact_top_k(stored, queries, 10) + 1
        assert recall_at_k([[i for i, _ in h] for h in hits], truth) >= 0.95
        i, s = hits[0][0]
        assert s == pytest.approx(float(stored[i - 1] @ queries[0]), abs=1e-5)  # re-ranked: exact scores
        # add after the build: a blob vector beside the shards, found first
        new = store.add([ImageRecord("new.jpg", "", "a" * 64, 1, 1, 1)], queries[1][None]).ids[0]
        assert new == 20_001 and store.search(queries[1], 1)[0] == (new, pytest.approx(1.0, abs=1e-5))
        # delete: gone from search, vectors refuse it, the shard row stays in its file
        store.delete([i, new])
        assert i not in [h for h, _ in store.search(queries[0], 20)] and new not in [h for h, _ in store.search(queries[1], 5)]
        with pytest.raises(SearchIndexError, match="deleted"):
            store.vectors([i])
        # exact filters, through the exact path and the selector path
        alive = np.array([j for j in range(1, 3001) if j != i])
        best = alive[np.argsort(-(stored[alive - 1] @ queries[2]), kind="stable")[:10]]
        flt = SearchFilter(where=(Condition("id", "<=", 3000),))
        assert [h for h, _ in store.search(queries[2], 10, flt)] == best.tolist()  # exact: a small subset
        store.exact_subset = 100  # the IVF selector, re-ranked
        got = [h for h, _ in store.search(queries[2], 10, flt)]
        assert len(got) == 10 and set(got) <= set(alive.tolist()) and recall_at_k([got], [best]) >= 0.9
    saved = load_index(tmp_path / "idx" / IndexStore.FAISS)  # read back as written, not rebuilt
    assert saved.kind == "ivfpq" and saved.dim == 32 and saved.ntotal == 19_999
    with IndexStore.open(tmp_path / "idx", writable=False, searchable=True) as store:  # saved, reconciled
        assert store.count() == 19_999 and store.ann.ntotal == 19_999 and store.ann.kind == "ivfpq"
        assert i not in store.ann.ids() and store.search(queries[0], 1)[0][0] != i


def test_missing_truncated_or_replaced_shard_is_named(tmp_path, capsys) -> None:
    vectors = clustered(300, 16, 10)
    root = write_clip_retrieval(tmp_path / "emb", vectors, None, shard_rows=100, dtype="float32")
    build_from_embeddings(root, tmp_path / "idx")
    shard = root / "img_emb" / "img_emb_1.npy"
    good = shard.read_bytes()
    shard.write_bytes(good[:-100])
    with pytest.raises(SearchIndexError, match=r"img_emb_1\.npy is truncated"):
        IndexStore.open(tmp_path / "idx")
    assert cli(["index", "info", str(tmp_path / "idx")]) == 2
    assert "img_emb_1.npy is truncated" in one_error_line(capsys)
    shard.unlink()
    with pytest.raises(SearchIndexError, match=r"img_emb_1\.npy is missing \(100 vectors of this index, ids 101\.\.200\)"):
        index_info(tmp_path / "idx")
    np.save(shard, clustered(100, 16, 10, seed=5))  # same shape, other vectors
    with pytest.raises(SearchIndexError, match=r"img_emb_1\.npy changed since the index was built"):
        IndexStore.open(tmp_path / "idx", writable=False, searchable=True)
    shard.write_bytes(good)
    assert index_info(tmp_path / "idx")["items"] == 300


def test_bad_embedding_folders_and_cli_input_exit_2_with_one_line(tmp_path, capsys) -> None:
    out = str(tmp_path / "idx")
    cases = [
        (["index", "build", "--out", out], "either SOURCE"),
        (["index", "build", str(tmp_path), "--from-embeddings", str(tmp_path), "--out", out], "not both"),
        (["index", "build", str(tmp_path), "--out", out], "needs --model"),
        (["index", "build", "--from-embeddings", str(tmp_path / "nothing"), "--out", out], "is not a folder of embeddings"),
        (["index", "build", "--from-embeddings", str(tmp_path), "--out", out], "holds no embeddings"),
    ]
    root = write_clip_retrieval(tmp_path / "emb", clustered(20, 8, 2), None, shard_rows=10)
    cases += [
        (["index", "build", "--from-embeddings", str(root), "--out", out, "--modality", "text"], "holds no text embeddings"),
        (["index", "build", "--from-embeddings", str(root), "--out", out, "--modality", "all"], "unknown modality"),
        (["index", "build", "--from-embeddings", str(root), "--out", out, "--memory-budget", "lots"], "cannot read 'lots' as a size"),
        (["index", "build", "--from-embeddings", str(root), "--out", out, "--kind", "hnsw"], "unknown index kind"),
    ]
    for argv, message in cases:
        assert cli(argv) == 2, argv
        assert message in one_error_line(capsys), argv
    assert not (tmp_path / "idx" / IndexStore.SQLITE).exists()
    (root / "metadata" / "metadata_1.parquet").unlink()  # shard 1 has vectors, no metadata
    with pytest.raises(SearchIndexError, match=r"img_emb_1\.npy has no metadata/metadata_1\.parquet"):
        build_from_embeddings(root, out)
    manifest = {"format": "clipforge-embeddings", "complete": False, "shards_total": 5, "shards": [{}, {}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match=r"unfinished `clipforge embed` run \(2 of 5 shards\)"):
        build_from_embeddings(root, out)


def test_interrupted_build_is_refused_then_resumed(tmp_path) -> None:
    vectors = clustered(90, 16, 5)
    root = write_clip_retrieval(tmp_path / "emb", vectors, None, shard_rows=30)
    meta = root / "metadata" / "metadata_2.parquet"
    good = meta.read_bytes()
    meta.write_bytes(b"PAR1 not really")  # the build stops at shard 2, after 0 and 1 committed
    with pytest.raises(SearchIndexError, match="metadata_2.parquet is not a readable parquet file"):
        build_from_embeddings(root, tmp_path / "idx")
    with pytest.raises(SearchIndexError, match="unfinished build from"):
        IndexStore.open(tmp_path / "idx")
    with pytest.raises(SearchIndexError, match="already holds an index"):
        IndexStore.create(tmp_path / "idx", model_ref="", model_config={"embed_dim": 16})
    meta.write_bytes(good)
    report = build_from_embeddings(root, tmp_path / "idx")  # resumes at shard 2
    assert report.total == 90
    with IndexStore.open(tmp_path / "idx") as store:
        assert store.db.ids().tolist() == list(range(1, 91)) and store.ann.ntotal == 90
        np.testing.assert_allclose(store.vectors([61, 90]), vectors[[60, 89]].astype(np.float16), atol=1e-6)
        assert store.items([61])[61].path == "/data/60.jpg"
    with pytest.raises(SearchIndexError, match="already holds an index"):
        build_from_embeddings(root, tmp_path / "idx")


def test_version_1_index_is_read_and_upgraded(index_copy: Path) -> None:
    with sqlite3.connect(index_copy / "meta.sqlite") as conn:  # back to what version 1 wrote
        conn.execute("ALTER TABLE items DROP COLUMN url")
        conn.execute("DROP TABLE text_vectors")
        conn.execute("DROP TABLE shards")
        conn.execute("UPDATE info SET value = '1' WHERE key = 'format_version'")
    assert index_info(index_copy)["items"] == 36  # read-only: read as it is
    with IndexStore.open(index_copy, writable=False, searchable=True) as store:
        assert store.items([1])[1].url is None and store.search(store.vectors([1])[0], 1)[0][0] == 1
    with IndexStore.open(index_copy) as store:  # writable: upgraded in place
        assert store.info["format_version"] == "2" and store.items([1])[1].url is None
        store.delete([2])
    assert index_info(index_copy)["items"] == 35


def test_building_from_embeddings_without_a_model_imports_no_torch(tmp_path) -> None:
    import subprocess
    import sys

    root = write_clip_retrieval(tmp_path / "emb", clustered(50, 8, 3), clustered(50, 8, 3, seed=1), shard_rows=20)
    probe = ("import sys\nfrom clipforge.cli import main\n"
             "try:\n    main(['index', 'build', '--from-embeddings', sys.argv[1], '--out', sys.argv[2]])\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "print('TORCH', 'torch' in sys.modules)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe, str(root), str(tmp_path / "idx")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TORCH False" in done.stdout and "50 items, flat index" in done.stdout
    assert index_info(tmp_path / "idx")["modalities"] == ["image", "text"]
