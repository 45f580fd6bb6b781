"""Clip-art data sets from Debian packages.

- Tux Paint stamps (``tuxpaint-stamps-default``): each stamp is an image (PNG or SVG) beside a
  ``.txt`` whose first line is its English description; the concept is the file name in words
  ("025quarter" -> "quarter").
- Openclipart (``openclipart-png``): PNGs named "<title>_<author>_NN.png" in topic folders;
  the title words come from the file name, the topic from the folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from PIL import Image

from ..errors import DataError
from .shards import Manifest, Record, read_manifest, write_dataset

__all__ = ["TUXPAINT_DIR", "OPENCLIPART_DIR", "build_tuxpaint", "build_openclipart", "stamp_concept",
           "openclipart_title"]  # fmt: skip

TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
BUILDER_VERSION = 1


def stamp_concept(stem: str) -> str:
    words = re.sub(r"[_\-]+", " ", re.sub(r"^\d+", "", stem))
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", words)  # camelCase -> camel case
    return re.sub(r"\s+", " ", words).strip().lower()


def _load(path: Path, size: int) -> Image.Image:
    if path.suffix == ".svg":
        import io

        import cairosvg

        png = cairosvg.svg2png(bytestring=path.read_bytes(), output_width=size, output_height=size)
        image = Image.open(io.BytesIO(png))
    else:
        image = Image.open(path)
    image = image.convert("RGBA")
    image.thumbnail((size, size))
    canvas = Image.new("RGBA", (size, size), "white")  # transparent clip-art on white
    canvas.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas.convert("RGB")


def _records(root: Path, size: int, limit: int | None, skipped: dict[str, int]) -> Iterator[Record]:
    stamps = sorted(p for p in root.rglob("*") if p.suffix in (".png", ".svg") and not p.stem.endswith(("_mirror", "_thumb")))
    seen: set[str] = set()
    for path in stamps[:limit] if limit else stamps:
        if path.stem in seen:  # the same stamp as PNG and SVG: keep one
            continue
        seen.add(path.stem)
        txt = path.with_suffix(".txt")
        description = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip() if txt.is_file() else ""
        concept = stamp_concept(path.stem)
        if not concept:
            skipped["no name"] = skipped.get("no name", 0) + 1
            continue
        try:
            image = _load(path, size)
        except Exception as e:  # one unreadable stamp costs one image, not the build
            skipped[f"unreadable: {type(e).__name__}"] = skipped.get(f"unreadable: {type(e).__name__}", 0) + 1
            continue
        captions = [c for c in (description, f"a drawing of a {concept}", f"clip art of a {concept}", concept) if c]
        yield Record(key=path.stem, image=image, captions=captions, concept=concept)


def build_tuxpaint(out_dir: str | Path, image_size: int = 64, holdout_fraction: float = 0.1,
                   force: bool = False, limit: int | None = None) -> Manifest:  # fmt: skip
    if not TUXPAINT_DIR.is_dir():
        raise DataError(f"Tux Paint stamps are not installed ({TUXPAINT_DIR} is missing): "
                        "run `apt-get install tuxpaint-stamps-default`")  # fmt: skip
    params = {"image_size": image_size, "holdout_fraction": holdout_fraction, "limit": limit,
              "builder_version": BUILDER_VERSION}  # fmt: skip
    existing = None if force else read_manifest(out_dir)
    if existing is not None and existing.params == params:
        return existing
    skipped: dict[str, int] = {}
    manifest = Manifest(name="tuxpaint", source="Debian tuxpaint-stamps-default", licence="GPL-2.0+",
                        attribution="Tux Paint stamps, the Tux Paint project", params=params)  # fmt: skip
    manifest = write_dataset(out_dir, manifest, _records(TUXPAINT_DIR, image_size, limit, skipped), holdout_fraction)
    manifest.skipped = skipped
    from .openmoji import _rewrite_manifest

    _rewrite_manifest(out_dir, manifest)
    return manifest


def openclipart_title(stem: str) -> str:
    """"armadillo_architetto_fra_01" -> "armadillo architetto fra": the numbering goes; the
    author's name, cut short in the file name, cannot be told from the title and stays."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", re.sub(r"_\d+$", "", stem))).strip().lower()


def _openclipart_records(root: Path, size: int, limit: int | None, skipped: dict[str, int]) -> Iterator[Record]:
    files = sorted(root.rglob("*.png"))
    for path in files[:: max(1, len(files) // limit)][:limit] if limit else files:
        title = openclipart_title(path.stem)
        topic = path.parent.name.replace("_", " ")
        if not title:
            skipped["no title"] = skipped.get("no title", 0) + 1
            continue
        try:
            image = _load(path, size)
        except Exception as e:  # one unreadable file costs one image, not the build
            skipped[f"unreadable: {type(e).__name__}"] = skipped.get(f"unreadable: {type(e).__name__}", 0) + 1
            continue
        captions = [f"clip art of {title}", f"{title}, a drawing from the {topic} collection", title]
        yield Record(key=f"{path.parent.name}/{path.stem}", image=image, captions=captions, concept=title)


def build_openclipart(out_dir: str | Path, image_size: int = 64, holdout_fraction: float = 0.1,
                      force: bool = False, limit: int | None = None, root: Path = OPENCLIPART_DIR) -> Manifest:  # fmt: skip
    if not root.is_dir():
        raise DataError(f"Openclipart is not installed ({root} is missing): run `apt-get install openclipart-png`")
    params = {"image_size": image_size, "holdout_fraction": holdout_fraction, "limit": limit,
              "builder_version": BUILDER_VERSION, "root": str(root)}  # fmt: skip
    existing = None if force else read_manifest(out_dir)
    if existing is not None and existing.params == params:
        return existing
    skipped: dict[str, int] = {}
    manifest = Manifest(name="openclipart", source="Debian openclipart-png", licence="public domain (CC0)",
                        attribution="Openclipart contributors", params=params)  # fmt: skip
    manifest = write_dataset(out_dir, manifest, _openclipart_records(root, image_size, limit, skipped), holdout_fraction)
    manifest.skipped = skipped
    from .openmoji import _rewrite_manifest

    _rewrite_manifest(out_dir, manifest)
    return manifest
