"""The real `clipforge` command in a subprocess: output, files, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import clipforge


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipforge", *args], capture_output=True, text=True, timeout=300)


def test_help_and_list_models() -> None:
    assert "convert" in run("--help").stdout
    listed = run("list-models").stdout.split()
    assert "ViT-B-32-quickgelu" in listed and "RN50x64" in listed


def test_convert_and_embed_round_trip(tmp_path: Path) -> None:
    model = clipforge.create_model("tiny-vit", seed=0)
    src = clipforge.save(model, tmp_path / "m.safetensors")
    done = run("convert", str(src), str(tmp_path / "hf"), "--to", "hf")
    assert done.returncode == 0, done.stderr
    for colour in ["red", "blue"]:
        Image.new("RGB", (48, 40), colour).save(tmp_path / f"{colour}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    done = run("embed", "--model", str(tmp_path / "hf"), "--images", str(tmp_path), "--out", str(tmp_path / "e.npy"),
               "--precision", "fp32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout and "broken.png" in done.stdout
    vectors = np.load(tmp_path / "e.npy")
    rows = (tmp_path / "e.txt").read_text().splitlines()
    assert vectors.shape == (2, 32) and [Path(r).name for r in rows] == ["blue.png", "red.png"]
    # Same numbers as the library on the same image.
    _, preprocess = clipforge.load(src)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(preprocess(Image.open(tmp_path / "red.png"))[None]), dim=-1)
    assert np.allclose(vectors[1], ref[0].numpy(), atol=1e-5)


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    for args in (
        ["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x"), "--to", "hf"],
        ["embed", "--model", "tiny-vit", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e.npy")],
        ["embed", "--model", "no-such-model", "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "e.npy")],
    ):
        done = run(*args)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr and done.stderr.startswith("error: ")
        assert len(done.stderr.strip().splitlines()) == 1


def test_data_build_then_info(tmp_path: Path) -> None:
    out = tmp_path / "emoji"
    built = run("data", "build", "openmoji", "--out", str(out), "--limit", "24", "--image-size", "32")
    assert built.returncode == 0, built.stderr
    assert (out / "manifest.json").is_file() and "train" in built.stdout
    info = run("data", "info", str(out))
    assert info.returncode == 0 and info.stdout == built.stdout  # the same manifest, described alike
    images = sum(int(line.split()[1].replace(",", "")) for line in info.stdout.splitlines()[2:5])
    assert images == 24
    missing = run("data", "info", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "clipforge data build" in missing.stderr and "Traceback" not in missing.stderr
