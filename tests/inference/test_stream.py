"""``embed_collection`` and ``clipforge embed --out DIR`` on real files: the numbers equal the fp32
model's, metadata rows line up with embedding rows, shards resume after a crash (in-process and a
SIGKILLed subprocess), WebDataset shards, image lists and texts work, bad input is never fatal."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge.errors import ClipforgeError, DataError
from clipforge.factory import create_model, create_preprocess
from clipforge.inference import embed_collection, embed_images, embed_texts
from clipforge.tokenizer import tokenize

SIZES = [(48, 40), (40, 48), (64, 64), (33, 70), (90, 30), (50, 50), (41, 43), (72, 55)]


@pytest.fixture(scope="module")
def model():
    return create_model("tiny-vit", seed=0)


@pytest.fixture(scope="module")
def preprocess(model):
    return create_preprocess(model)


def picture(i: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """8 real images (PNG and JPEG, in a sub-folder too), a corrupt PNG and a zero-byte JPEG."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i, size in enumerate(SIZES):
        name = f"sub/img{i}.jpg" if i % 3 == 0 else f"img{i}.png"
        picture(i, size).save(root / name)
    (root / "img1.txt").write_text("a caption beside img1\n")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    (root / "empty.jpg").write_bytes(b"")
    return root


def reference(model, preprocess, images: list[Image.Image]) -> np.ndarray:
    """The fp32 model itself, no engine: (n, embed_dim) normalised."""
    with torch.no_grad():
        x = torch.stack([preprocess(im) for im in images])  # (n, 3, H, W)
        return F.normalize(model.encode_image(x), dim=-1).numpy()


def read_out(out: Path, kind: str = "img") -> tuple[np.ndarray, list[dict]]:
    vectors = np.concatenate([np.load(p) for p in sorted((out / f"{kind}_emb").glob("*.npy"))])
    rows = [r for p in sorted((out / "metadata").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return vectors, rows


def test_shards_equal_the_fp32_model_row_for_row(model, preprocess, folder: Path, tmp_path: Path) -> None:
    summary = embed_collection(model, preprocess, folder, tmp_path / "out", shard_size=3, batch_size=2, workers=0)
    assert (summary.items, summary.rows, summary.skipped, summary.shards) == (10, 8, 2, 4)
    assert sorted(Path(s["path"]).name for s in summary.skipped_items) == ["corrupt.png", "empty.jpg"]
    vectors, rows = read_out(tmp_path / "out")
    assert vectors.shape == (8, 32) and vectors.dtype == np.float32 and len(rows) == 8
    # Row alignment: each metadata row names the file whose embedding sits in the same row.
    images = [Image.open(r["path"]) for r in rows]
    assert np.abs(vectors - reference(model, preprocess, images)).max() <= 1e-5
    assert [(r["width"], r["height"]) for r in rows] == [im.size for im in images]
    assert all(r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest() for r in rows)
    assert [r["caption"] for r in rows if r["path"].endswith("img1.png")] == ["a caption beside img1"]
    assert sorted(r["index"] for r in rows) == [r["index"] for r in rows]  # source order kept
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["shard_size"] == 3 and manifest["embed_dim"] == 32
    assert len((tmp_path / "out" / "skipped.jsonl").read_text().splitlines()) == 2
    assert summary.engine_seconds > 0 and summary.model_items_per_s > 0 and summary.end_to_end_items_per_s > 0


def test_worker_processes_and_bf16_and_float16(model, preprocess, folder: Path, tmp_path: Path) -> None:
    exact = embed_collection(model, preprocess, folder, tmp_path / "a", shard_size=3, batch_size=2, workers=0)
    assert exact.precision == "fp32"
    workers = embed_collection(model, preprocess, folder, tmp_path / "b", shard_size=3, batch_size=2, workers=2,
                               precision="bf16", dtype="float16")  # fmt: skip
    assert workers.precision == "bf16" and workers.rows == exact.rows
    a, rows_a = read_out(tmp_path / "a")
    b, rows_b = read_out(tmp_path / "b")
    assert b.dtype == np.float16 and rows_a == rows_b
    cosine = (a * b.astype(np.float32)).sum(-1) / np.linalg.norm(b.astype(np.float32), axis=-1)
    assert cosine.min() >= 0.999


def test_resume_keeps_finished_shards_and_recomputes_the_partial_one(model, preprocess, folder: Path,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    whole = tmp_path / "whole"
    embed_collection(model, preprocess, folder, whole, shard_size=3, batch_size=2, workers=0)

    def crash_after_shard_1(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt  # as if the run were killed here

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        embed_collection(model, preprocess, folder, out, shard_size=3, batch_size=2, workers=0,
                         on_shard=crash_after_shard_1)  # fmt: skip
    assert sorted(p.name for p in (out / "done").iterdir()) == ["00000.json", "00001.json"]  # one marker a shard
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    finished = {p: p.stat().st_mtime_ns for p in [*(out / "img_emb").iterdir(), *(out / "metadata").iterdir()]}
    (out / "img_emb" / "img_emb_00002.npy").write_bytes(b"half-written by the killed run")

    written: list[int] = []
    summary = embed_collection(model, preprocess, folder, out, shard_size=3, batch_size=2, workers=0,
                               on_shard=written.append)  # fmt: skip
    assert written == [2, 3] and summary.shards_reused == 2 and summary.processed == 4
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # finished shards untouched
    assert np.array_equal(read_out(out)[0], read_out(whole)[0]) and read_out(out)[1] == read_out(whole)[1]
    assert (out / "skipped.jsonl").read_text() == (whole / "skipped.jsonl").read_text()
    again = embed_collection(model, preprocess, folder, out, shard_size=3, batch_size=2, workers=0)
    assert again.processed == 0 and again.shards_reused == 4 and again.rows == 8


def test_shard_workers_share_one_folder_and_the_last_one_finalizes(model, preprocess, folder: Path,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    whole = tmp_path / "whole"
    embed_collection(model, preprocess, folder, whole, shard_size=3, batch_size=2, workers=0)
    out = tmp_path / "out"
    written = []
    for index in (2, 0, 1):  # in any order, as a Slurm array's tasks start
        summary = embed_collection(model, preprocess, folder, out, shard_size=3, batch_size=2, workers=0,
                                   shard_index=index, num_shards=3, on_shard=written.append)  # fmt: skip
        assert summary.complete == (index == 1) and summary.shards_total == 4
        assert (out / "skipped.jsonl").is_file() == (index == 1)
    assert written == [2, 0, 3, 1]  # shard k belongs to worker k % 3
    assert summary.rows == 8 and summary.skipped == 2 and summary.shards == 4 and summary.shards_written == 1
    for name in ("img_emb/img_emb_00001.npy", "metadata/metadata_00003.parquet", "skipped.jsonl"):
        assert (out / name).read_bytes() == (whole / name).read_bytes()
    manifest, expected = (json.loads((d / "manifest.json").read_text()) for d in (out, whole))
    assert manifest == expected and manifest["complete"] and [s["rows"] for s in manifest["shards"]] == [1, 3, 3, 1]
    marker = json.loads((out / "done" / "00002.json").read_text())
    assert marker["rows"] == 3 and [f["file"] for f in marker["files"]] == ["img_emb/img_emb_00002.npy",
                                                                            "metadata/metadata_00002.parquet"]
    assert marker["files"][0]["sha256"] == hashlib.sha256((out / marker["files"][0]["file"]).read_bytes()).hexdigest()
    # A finished shard whose file went missing is done again, by its own worker only.
    (out / "metadata" / "metadata_00002.parquet").unlink()
    again = embed_collection(model, preprocess, folder, out, shard_size=3, workers=0, shard_index=0, num_shards=3)
    assert again.processed == 0 and not again.complete
    again = embed_collection(model, preprocess, folder, out, shard_size=3, workers=0, shard_index=2, num_shards=3)
    assert again.processed == 3 and again.complete and read_out(out)[1] == read_out(whole)[1]
    with pytest.raises(ClipforgeError, match="delete the others"):
        embed_collection(model, preprocess, folder, out, shard_size=3, shard_index=0, num_shards=2, overwrite=True)
    with pytest.raises(ClipforgeError, match="--shard-index must be in 0..1"):
        embed_collection(model, preprocess, folder, out, shard_size=3, shard_index=2, num_shards=2)


def test_a_folder_of_format_1_resumes_from_its_done_prefix(model, preprocess, folder: Path, tmp_path: Path) -> None:
    """Before done markers, the manifest listed the finished shards (a prefix) and skipped.jsonl
    was rewritten after each: such a folder is turned into markers and resumed."""
    whole, out = tmp_path / "whole", tmp_path / "out"
    embed_collection(model, preprocess, folder, whole, shard_size=3, batch_size=2, workers=0)
    shutil.copytree(whole, out)
    shutil.rmtree(out / "done")
    (out / "img_emb" / "img_emb_00002.npy").unlink()
    (out / "metadata" / "metadata_00003.parquet").unlink()
    manifest = json.loads((whole / "manifest.json").read_text())
    old = {k: v for k, v in manifest.items() if k not in ("rows", "skipped")}
    old.update(format_version=1, complete=False, shards=manifest["shards"][:3])  # shard 2's files are gone: 2 count
    (out / "manifest.json").write_text(json.dumps(old))
    summary = embed_collection(model, preprocess, folder, out, shard_size=3, batch_size=2, workers=0)
    assert summary.shards_reused == 2 and summary.processed == 4 and summary.complete
    assert read_out(out)[1] == read_out(whole)[1] and np.array_equal(read_out(out)[0], read_out(whole)[0])
    assert (out / "skipped.jsonl").read_text() == (whole / "skipped.jsonl").read_text()
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_another_model_or_source_is_an_error_unless_overwrite(model, preprocess, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    embed_collection(model, preprocess, folder, out, shard_size=3, workers=0)
    with pytest.raises(DataError, match="another model"):
        embed_collection(create_model("tiny-vit", seed=1), preprocess, folder, out, shard_size=3, workers=0)
    (folder / "img2.png").unlink()
    with pytest.raises(DataError, match="another source items"):
        embed_collection(model, preprocess, folder, out, shard_size=3, workers=0)
    with pytest.raises(DataError, match="another shard size"):
        embed_collection(model, preprocess, tmp_path / "images", out, shard_size=4, workers=0)
    summary = embed_collection(model, preprocess, folder, out, shard_size=4, workers=0, overwrite=True)
    assert summary.rows == 7 and summary.shards == 3 and len(list((out / "img_emb").iterdir())) == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        embed_collection(model, preprocess, folder, tmp_path / "other", workers=0)


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_webdataset_shards(model, preprocess, tmp_path: Path) -> None:
    images = [picture(i, size) for i, size in enumerate(SIZES[:5])]
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards" / "000.tar", [
        ("s0", {"jpg": encoded(images[0], "JPEG"), "txt": b"first caption"}),
        ("s1", {"png": encoded(images[1], "PNG")}),
        ("s2", {"png": b"\x89PNG broken", "txt": b"a corrupt image"}),
    ])  # fmt: skip
    write_shard(tmp_path / "shards" / "001.tar", [
        ("s3", {"webp": encoded(images[2], "WEBP"), "json": b'{"caption": "from json"}'}),
        ("s4", {"txt": b"no image at all"}),
        ("dir/s5", {"jpg": encoded(images[3], "JPEG"), "txt": b"in a folder"}),
    ])  # fmt: skip
    summary = embed_collection(model, preprocess, str(tmp_path / "shards" / "{000..001}.tar"), tmp_path / "out",
                               shard_size=2, workers=2)  # fmt: skip
    assert (summary.items, summary.rows, summary.skipped) == (5, 4, 2)
    vectors, rows = read_out(tmp_path / "out")
    assert [r["key"] for r in rows] == ["s0", "s1", "s3", "dir/s5"]
    assert [r["caption"] for r in rows] == ["first caption", None, "from json", "in a folder"]
    decoded = [Image.open(io.BytesIO(b)) for b in (encoded(images[0], "JPEG"), encoded(images[1], "PNG"),
                                                   encoded(images[2], "WEBP"), encoded(images[3], "JPEG"))]  # fmt: skip
    assert np.abs(vectors - reference(model, preprocess, decoded)).max() <= 1e-5
    # A folder of .tar is the same source.
    again = embed_collection(model, preprocess, tmp_path / "shards", tmp_path / "out2", shard_size=2, workers=0)
    assert np.array_equal(read_out(tmp_path / "out2")[0], vectors) and again.rows == 4


def test_list_of_image_paths(model, preprocess, folder: Path, tmp_path: Path) -> None:
    listing = folder / "list.txt"
    listing.write_text(f"img2.png\nsub/img0.jpg\nmissing.png\n{folder / 'img1.png'}\n")
    summary = embed_collection(model, preprocess, listing, tmp_path / "out", workers=0)
    vectors, rows = read_out(tmp_path / "out")
    assert [Path(r["path"]).name for r in rows] == ["img2.png", "img0.jpg", "img1.png"]
    assert [s["index"] for s in summary.skipped_items] == [2]
    expected = reference(model, preprocess, [Image.open(r["path"]) for r in rows])
    assert np.abs(vectors - expected).max() <= 1e-5


def test_texts(model, tmp_path: Path) -> None:
    texts = ["a red circle", "", "a photo of a cat on a very long and winding road " * 12, "blue", "x"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    summary = embed_collection(model, None, tmp_path / "t.txt", tmp_path / "out", kind="text", shard_size=3)
    assert (summary.items, summary.rows, summary.shards) == (4, 4, 2)
    vectors, rows = read_out(tmp_path / "out", "text")
    assert [r["index"] for r in rows] == [0, 2, 3, 4] and rows[1]["text"] == texts[2].strip()
    with torch.no_grad():
        tokens = tokenize([r["text"] for r in rows], context_length=model.context_length, truncate=True)
        expected = F.normalize(model.encode_text(tokens), dim=-1).numpy()
    assert np.abs(vectors - expected).max() <= 1e-5
    assert np.abs(embed_texts(model, [r["text"] for r in rows]).embeddings - expected).max() <= 1e-5


def test_embed_images_runs_through_the_engine(model, preprocess, folder: Path) -> None:
    paths = sorted(folder.rglob("*.png")) + sorted(folder.rglob("*.jpg"))
    result = embed_images(model, preprocess, paths, batch_size=3, workers=0)
    assert sorted(Path(p).name for p in result.skipped) == ["corrupt.png", "empty.jpg"]
    expected = reference(model, preprocess, [Image.open(p) for p in result.items])
    assert result.embeddings.shape == (8, 32) and np.abs(result.embeddings - expected).max() <= 1e-5


def cli(*args: str, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    command = [sys.executable, "-m", "clipforge", "embed", *args]
    if kwargs.pop("background", False):
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_bad_source_is_one_line_without_traceback(tmp_path: Path) -> None:
    done = cli("--model", "tiny-vit", "--images", str(tmp_path / "x-{000..002}.tar"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "x-000.tar does not exist (and 2 more)" in done.stderr and not (tmp_path / "out").exists()
    done = cli("--model", "tiny-vit", "--images", str(tmp_path), "--out", str(tmp_path / "out"), "--shard-index", "3",
               "--num-shards", "3")  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip() == "error: --shard-index must be in 0..2 with --num-shards 3"


@pytest.mark.slow  # two real processes: ~10 s
def test_cli_resumes_after_sigkill(model, preprocess, tmp_path: Path) -> None:
    checkpoint = clipforge.save(model, tmp_path / "m.safetensors")
    (tmp_path / "many").mkdir()
    for i in range(40):
        picture(i, (40, 40)).save(tmp_path / "many" / f"{i:03d}.png")
    args = ("--model", str(checkpoint), "--images", str(tmp_path / "many"), "--out", str(tmp_path / "out"),
            "--shard-size", "2", "--batch-size", "1", "--workers", "0", "--precision", "fp32")  # fmt: skip
    run = cli(*args, background=True)
    markers = tmp_path / "out" / "done"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run.poll() is None:
        if any(markers.glob("*.json")):  # a marker, not the temporary file it is renamed from
            run.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    run.wait(timeout=60)
    done_before = len(list(markers.glob("*.json")))
    if done_before == 20:
        pytest.skip("the run finished before it could be killed")
    assert run.returncode == -signal.SIGKILL and done_before >= 1
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert f"{done_before} finished earlier and kept" in done.stdout and "model only" in done.stdout
    vectors, rows = read_out(tmp_path / "out")
    assert [Path(r["path"]).name for r in rows] == [f"{i:03d}.png" for i in range(40)]
    expected = reference(model, preprocess, [Image.open(r["path"]) for r in rows])
    assert np.abs(vectors - expected).max() <= 1e-5
