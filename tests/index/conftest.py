"""Fixtures for index tests: a tiny model saved as a checkpoint (an index needs reproducible
weights) and a real collection of distinct images with captions, folders and a duplicate."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 170), "orange": (245, 140, 30), "black": (20, 20, 20), "white": (245, 245, 245)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")


def draw_image(seed: int, size: tuple[int, int] = (64, 56)) -> tuple[Image.Image, str]:
    """A distinct picture: a coloured shape on a coloured, textured background, and its caption."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    fg, bg = rng.choice(len(names), 2, replace=False)
    shape = SHAPES[seed % len(SHAPES)]
    noise = rng.integers(-25, 25, (size[1], size[0], 3))
    base = np.clip(np.array(COLOURS[names[bg]]) + noise, 0, 255).astype("uint8")
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.integers(2, 20, 2)
    box = (int(x0), int(y0), int(x0) + size[0] // 2, int(y0) + size[1] // 2)
    colour = COLOURS[names[fg]]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
    return image, f"a {names[fg]} {shape} on a {names[bg]} background"


def make_collection(
    root: Path, n: int, folders: tuple[str, ...] = ("animals", "animals/cats", "plants"), first_seed: int = 0
) -> list[Path]:
    """n distinct images in folders (round robin), each with a caption sidecar -> their paths."""
    paths = []
    for i in range(n):
        folder = root / folders[i % len(folders)]
        folder.mkdir(parents=True, exist_ok=True)
        image, caption = draw_image(first_seed + i)
        path = folder / f"img{i:03d}.png"
        image.save(path)
        path.with_suffix(".txt").write_text(caption + "\n")
        paths.append(path)
    return paths


def perturbed_copy(path: Path) -> bytes:
    """The same picture re-encoded as JPEG: different bytes, nearly the same content."""
    import io

    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


class Helpers:
    """Test-data helpers, handed to tests as a fixture (test modules cannot import conftest
    under --import-mode=importlib)."""

    draw_image = staticmethod(draw_image)
    make_collection = staticmethod(make_collection)
    perturbed_copy = staticmethod(perturbed_copy)


@pytest.fixture(scope="session")
def helpers() -> type[Helpers]:
    return Helpers


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import clipforge

    model = clipforge.create_model("tiny-vit", seed=0)
    return clipforge.save(model, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_collection(root, 36)
    return root


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, collection, tiny_checkpoint) -> Path:
    """A pristine index over ``collection``; tests that change an index copy it first."""
    from clipforge.index import build_index

    out = tmp_path_factory.mktemp("built") / "idx"
    build_index(collection, str(tiny_checkpoint), out, batch_size=16, workers=0)
    return out


@pytest.fixture
def index_copy(built_index, tmp_path) -> Path:
    dest = tmp_path / "idx"
    shutil.copytree(built_index, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest
