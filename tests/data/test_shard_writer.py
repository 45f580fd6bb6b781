"""`clipforge data shards`: img2dataset's layout from a table or a folder, read back by both
training paths, resumable after SIGKILL with the same bytes, bad input in one line."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from clipforge import wds
from clipforge.data import load_items
from clipforge.data.shard_sets import known_size, shard_sets
from clipforge.data.shard_writer import write_shards
from clipforge.errors import DataError


def _table(root: Path, n: int) -> Path:
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"img/{i}.{'png' if i % 2 else 'jpg'}"
        Image.new("RGB", (30, 20), (i * 9 % 255, 80, 30)).save(root / name)
        rows.append({"image": name, "caption": f"thing {i}|other words {i}"})
    (root / "img" / "bad.png").write_bytes(b"not an image")
    Image.new("RGB", (5, 5)).save(root / "img" / "nocap.png")
    rows += [{"image": "img/bad.png", "caption": "bad"}, {"image": "img/nocap.png", "caption": " "}]
    with open(root / "t.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "t.csv"


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def test_table_to_shards_read_back_by_both_paths(tmp_path: Path) -> None:
    table = _table(tmp_path, 11)
    summary = write_shards(table, tmp_path / "out", 4, progress=False)
    assert summary.samples == 11 and summary.skipped == {"failed to decode": 1, "no caption": 1}
    samples = [s for url in sorted(map(str, (tmp_path / "out").glob("*.tar"))) for s in wds.iter_samples(url)]
    assert [json.loads(s["json"])["captions"] for s in samples] == [[f"thing {i}", f"other words {i}"] for i in range(11)]
    assert samples[0]["jpg"] == (tmp_path / "img" / "0.jpg").read_bytes()  # original bytes kept
    assert samples[1]["png"] == (tmp_path / "img" / "1.png").read_bytes()
    assert samples[0]["__key__"] == "000000000" and samples[4]["__key__"] == "000010000"
    assert known_size(shard_sets(str(tmp_path / "out"))) == 11  # sizes.json for the streaming trainer
    items = load_items(str(tmp_path / "out"))  # the in-memory path reads the folder of tars
    assert [it.captions for it in items][:2] == [("thing 0", "other words 0"), ("thing 1", "other words 1")]


def test_folder_source(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 2, 3)).save(tmp_path / "f" / f"{i}.png")
        (tmp_path / "f" / f"{i}.txt").write_text(f"a square {i}\n")
    assert write_shards(tmp_path / "f", tmp_path / "out", 10, progress=False).samples == 3


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_bytes(tmp_path: Path) -> None:
    table = _table(tmp_path, 60)
    write_shards(table, tmp_path / "clean", 2, progress=False)
    args = [sys.executable, "-m", "clipforge", "data", "shards", str(table), "--out", str(tmp_path / "killed"),
            "--shard-size", "2"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (tmp_path / "killed" / "00003_stats.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "sizes.json").exists()  # killed part-way
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "kept from an earlier run" in rerun.stdout and not rerun.stdout.startswith("wrote 0")
    assert _digests(tmp_path / "killed") == _digests(tmp_path / "clean")
    assert not list((tmp_path / "killed").glob(".*tmp"))


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    table = _table(tmp_path, 3)
    with pytest.raises(DataError, match="shard-size"):
        write_shards(table, tmp_path / "out", 0)
    write_shards(table, tmp_path / "out", 2, progress=False)
    before = _digests(tmp_path / "out")
    for args, expected in [([str(tmp_path / "none.csv")], "does not exist"),
                           ([str(table), "--shard-size", "3"], "--overwrite")]:  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "clipforge", "data", "shards", *args, "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert _digests(tmp_path / "out") == before  # earlier shards intact


def test_missing_file_counted_alpha_kept_and_only_our_files_replaced(tmp_path: Path) -> None:
    Image.new("RGBA", (6, 4), (200, 10, 10, 90)).save(tmp_path / "a.tif")  # not kept as is: PNG, alpha and all
    (tmp_path / "t.csv").write_text("image,caption\na.tif,see-through\nmissing.png,gone\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000.tar").write_bytes(bytes(1024))  # someone else's shard: never taken as done
    with pytest.raises(DataError, match="did not write"):
        write_shards(tmp_path / "t.csv", out, 5, progress=False)
    (out / "notes.tar").write_bytes(b"mine")
    summary = write_shards(tmp_path / "t.csv", out, 5, overwrite=True, progress=False)  # a missing image is not fatal
    assert summary.samples == 1 and summary.skipped == {"failed to decode": 1}
    assert (out / "notes.tar").read_bytes() == b"mine"  # --overwrite replaces only the files it writes
    [sample] = wds.iter_samples(str(out / "00000.tar"))
    with Image.open(io.BytesIO(sample["png"])) as png, Image.open(tmp_path / "a.tif") as tif:
        assert png.mode == "RGBA" and png.tobytes() == tif.tobytes()
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "00000.parquet").to_pylist()
    assert rows[1]["key"] == "000000001" and rows[1]["error_message"].startswith("FileNotFoundError")
