"""Clip-art data sets from Debian packages (optional: ``apt-get install`` them first).

- Tux Paint stamps (``tuxpaint-stamps-default``, GPL-2): about 960 stamps, each an image (PNG
  or SVG) beside a ``.txt`` whose first line is its English description ("A tanker truck.").
  The concept is that description when it is a short noun phrase ("tanker truck"), else the
  file name in words ("025quarter" -> "quarter").
- Openclipart (``openclipart-png``, public domain): about 8,000 PNGs named
  "<title>_<author>_NN.png" in topic folders; the title comes from the file name, the topic
  from the folder.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

from PIL import Image

from ..errors import DataError
from ..images import find_files
from .manifest import Manifest
from .shards import Job, Plan, build_cached, check_params, spread

__all__ = ["TUXPAINT_DIR", "OPENCLIPART_DIR", "build_tuxpaint", "build_openclipart", "stamp_concept",
           "description_concept", "openclipart_title", "render_clipart"]  # fmt: skip

TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
BUILDER_VERSION = 2  # 2: val split, concepts from descriptions, process pool
# Openclipart has a few 10,000 x 16,000 px patterns: decoding one takes seconds and ~700 MB for
# a 64 px thumbnail. Files larger than this are skipped (and counted).
MAX_PIXELS = 40_000_000
_ARTICLE = re.compile(r"^(a|an|the|some)\s+", re.IGNORECASE)


def stamp_concept(stem: str) -> str:
    """File name in words: "025quarter" -> "quarter", "dinosaurSings" -> "dinosaur sings"."""
    words = re.sub(r"[_\-]+", " ", re.sub(r"^\d+", "", stem))
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", words)  # camelCase -> camel case
    words = re.sub(r"(?<=[a-z])\d+$", "", words)  # "balloon360" -> "balloon": numbering, not meaning
    return re.sub(r"\s+", " ", words).strip().lower()


def description_concept(description: str, max_words: int = 4) -> str | None:
    """ "A tanker truck." -> "tanker truck"; None for a sentence (too many words, or signs)."""
    phrase = re.sub(r"\([^)]*\)", "", description.strip().split(". ")[0])  # no "($.25)" asides
    phrase = _ARTICLE.sub("", " ".join(phrase.split()).rstrip(".!").strip())
    if not phrase or len(phrase.split()) > max_words or not re.fullmatch(r"[A-Za-z][A-Za-z0-9 '\-]*", phrase):
        return None
    return phrase.lower()


class ImageTooLarge(ValueError):
    """A source image above MAX_PIXELS (its name is the skip reason in the manifest)."""


def _open_within_budget(path: str) -> Image.Image:
    # Our own limit replaces PIL's bomb warning/error: the size is read from the header,
    # before anything is decoded.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError:
            raise ImageTooLarge(path) from None
    if image.width * image.height > MAX_PIXELS:
        raise ImageTooLarge(f"{path} is {image.width}x{image.height}")
    return image


def render_clipart(path: str, size: int) -> Image.Image:
    """A PNG or SVG scaled to fit ``size`` x ``size``, centred on white (clip-art is transparent)."""
    if path.endswith(".svg"):
        import io

        import cairosvg

        # Width only: cairosvg keeps the aspect ratio; the thumbnail below fits the height.
        image = Image.open(io.BytesIO(cairosvg.svg2png(url=path, output_width=size)))
    else:
        image = _open_within_budget(path)
    image = image.convert("RGBA")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), "white")
    canvas.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas.convert("RGB")


def _require(root: Path, package: str, what: str) -> None:
    if not root.is_dir():
        raise DataError(f"{what} is not installed ({root} is missing): run `apt-get install {package}`")


# --- Tux Paint ---------------------------------------------------------------------------------
def _stamp_files(root: Path, skipped: Counter[str]) -> list[Path]:
    chosen: dict[Path, Path] = {}
    for path in find_files(root, {".png", ".svg"}):  # SVG: Tux Paint's vector stamps, rendered by cairosvg
        if path.stem.endswith("_mirror"):  # Tux Paint's pre-mirrored copy of another stamp
            skipped["mirrored copy of another stamp"] += 1
        elif path.with_suffix("") in chosen:  # one stamp as PNG and SVG: keep the PNG (sorted first)
            skipped["same stamp in another format"] += 1
        else:
            chosen[path.with_suffix("")] = path
    return list(chosen.values())


def _stamp_job(root: Path, path: Path, skipped: Counter[str]) -> Job | None:
    txt = path.with_suffix(".txt")
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines() if txt.is_file() else []
    description = lines[0].strip() if lines else ""
    # A short description names the stamp best; else its file name; else a longer description
    # ("001.png": "A European coin of 1 cent (0.01 €).").
    concept = description_concept(description) or stamp_concept(path.stem) or description_concept(description, 8)
    if not concept:
        skipped["no name"] += 1
        return None
    topic = path.parent.relative_to(root).parts[0] if path.parent != root else ""
    captions = [c for c in (description, f"a drawing of {concept}", f"clip art of {concept}", concept) if c]
    key = str(path.relative_to(root).with_suffix(""))
    return Job(key, str(path), tuple(dict.fromkeys(captions)), concept,
               {"file": str(path.relative_to(root)), "description": description, "topic": topic})  # fmt: skip


def _tuxpaint_plan(root: Path, limit: int | None) -> Plan:
    skipped: Counter[str] = Counter()
    jobs = [job for path in _stamp_files(root, skipped) if (job := _stamp_job(root, path, skipped))]
    manifest = Manifest(name="tuxpaint", source="Tux Paint stamps (Debian tuxpaint-stamps-default)",
                        licence="GPL-2.0-or-later", attribution="Tux Paint stamps, by the Tux Paint project "
                        "and contributors (tuxpaint.org)", params={})  # fmt: skip
    return Plan(manifest, spread(jobs, limit), render_clipart, skipped)


def build_tuxpaint(out_dir: str | Path, image_size: int = 64, holdout_fraction: float = 0.1,
                   val_fraction: float = 0.05, force: bool = False, limit: int | None = None,
                   workers: int | None = None, root: Path = TUXPAINT_DIR) -> Manifest:  # fmt: skip
    _require(root, "tuxpaint-stamps-default", "Tux Paint stamps")
    return _build(out_dir, root, _tuxpaint_plan, image_size, holdout_fraction, val_fraction, force, limit, workers)


def _build(out_dir: str | Path, root: Path, make_plan: Callable[[Path, int | None], Plan], image_size: int,
           holdout_fraction: float, val_fraction: float, force: bool, limit: int | None,
           workers: int | None) -> Manifest:  # fmt: skip
    """Both clip-art builders: check, then build or reuse the build with these parameters."""
    check_params(image_size, holdout_fraction, val_fraction, limit)
    params = {"image_size": image_size, "holdout_fraction": holdout_fraction, "val_fraction": val_fraction,
              "limit": limit, "builder_version": BUILDER_VERSION, "root": str(root)}  # fmt: skip
    return build_cached(out_dir, params, lambda: make_plan(root, limit), force=force, workers=workers)


# --- Openclipart -------------------------------------------------------------------------------
def openclipart_title(stem: str) -> str:
    """ "armadillo_architetto_fra_01" -> "armadillo architetto fra": the numbering goes; the
    author's name, cut short in the file name, cannot be told from the title and stays."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", re.sub(r"_\d*$", "", stem))).strip().lower()


def _openclipart_plan(root: Path, limit: int | None) -> Plan:
    skipped: Counter[str] = Counter()
    jobs = []
    for path in find_files(root, {".png"}):
        title = openclipart_title(path.stem)
        if not title:
            skipped["no title"] += 1
            continue
        topic = path.parent.name.replace("_", " ")
        captions = (f"clip art of {title}", f"{title}, a drawing from the {topic} collection", title)
        key = str(path.relative_to(root).with_suffix(""))
        jobs.append(Job(key, str(path), captions, title, {"file": str(path.relative_to(root)), "topic": topic}))
    manifest = Manifest(name="openclipart", source="Openclipart 0.18 (Debian openclipart-png)",
                        licence="public domain (Creative Commons Public Domain Dedication)",
                        attribution="Openclipart contributors (openclipart.org)", params={})  # fmt: skip
    return Plan(manifest, spread(jobs, limit), render_clipart, skipped)


def build_openclipart(out_dir: str | Path, image_size: int = 64, holdout_fraction: float = 0.1,
                      val_fraction: float = 0.05, force: bool = False, limit: int | None = None,
                      workers: int | None = None, root: Path = OPENCLIPART_DIR) -> Manifest:  # fmt: skip
    _require(root, "openclipart-png", "Openclipart")
    return _build(out_dir, root, _openclipart_plan, image_size, holdout_fraction, val_fraction, force, limit, workers)
