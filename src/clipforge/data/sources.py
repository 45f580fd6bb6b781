"""Image–caption sources: CSV/TSV, JSONL, an image folder with sidecar captions, WebDataset
shards, and a synthetic source for tests. Each becomes a list of ``Item``s whose image is read
only when needed (in a DataLoader worker).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from ..errors import DataError

__all__ = ["Item", "load_items", "synthetic_items", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class Item:
    open_image: Callable[[], Image.Image]  # raises OSError/ValueError for a bad image
    captions: tuple[str, ...]
    concept: str | None = None
    key: str = ""


def _from_path(path: Path) -> Callable[[], Image.Image]:
    def open_image() -> Image.Image:
        with Image.open(path) as image:
            image.load()
            return image

    return open_image


def _from_bytes(data: bytes) -> Callable[[], Image.Image]:
    def open_image() -> Image.Image:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    return open_image


def _split_captions(text: str) -> tuple[str, ...]:
    # Several captions of one image share a field, separated by '|'.
    return tuple(c.strip() for c in text.split("|") if c.strip())


def _table_items(path: Path, image_key: str, caption_key: str) -> list[Item]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=delimiter))
    if rows and (image_key not in rows[0] or caption_key not in rows[0]):
        raise DataError(f"{path} needs columns {image_key!r} and {caption_key!r}; it has {list(rows[0])}")
    return _group(path.parent, [(r[image_key], _split_captions(r[caption_key] or "")) for r in rows])


def _jsonl_items(path: Path, image_key: str, caption_key: str) -> list[Item]:
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n} is not JSON ({e})") from None
        captions = row.get("captions") or row.get(caption_key) or ""
        captions = tuple(captions) if isinstance(captions, list) else _split_captions(captions)
        pairs.append((row.get(image_key, ""), captions))
    return _group(path.parent, pairs)


def _group(root: Path, pairs: list[tuple[str, tuple[str, ...]]]) -> list[Item]:
    """Rows naming the same image pool their captions (one image, several captions)."""
    grouped: dict[str, list[str]] = {}
    for image, captions in pairs:
        grouped.setdefault(image, []).extend(captions)
    return [Item(_from_path(root / image), tuple(caps), key=image) for image, caps in grouped.items()]


def _folder_items(root: Path) -> list[Item]:
    items = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        sidecar = path.with_suffix(".txt")
        captions = tuple(l.strip() for l in sidecar.read_text(encoding="utf-8").splitlines() if l.strip()) if sidecar.is_file() else ()
        items.append(Item(_from_path(path), captions, key=str(path.relative_to(root))))
    return items


def _webdataset_items(pattern: str) -> list[Item]:
    """Read local shards into memory (compressed images): fine up to a few hundred thousand
    samples; beyond that, stream with webdataset directly."""
    import webdataset as wds
    from braceexpand import braceexpand

    urls = [u for part in pattern.split("::") for u in braceexpand(part)]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise DataError(f"WebDataset shard {missing[0]} does not exist")
    items = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        image_bytes = next((sample[k] for k in ("png", "jpg", "jpeg", "webp") if k in sample), b"")
        meta = json.loads(sample["json"]) if "json" in sample else {}
        captions = meta.get("captions") or ([sample["txt"].decode()] if "txt" in sample else [])
        items.append(Item(_from_bytes(image_bytes), tuple(captions), meta.get("concept"), sample["__key__"]))
    return items


def synthetic_items(n: int, seed: int = 0, size: int = 32) -> list[Item]:
    """Coloured shapes with matching captions ("a red circle"): learnable, deterministic."""
    colours = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
    shapes = ["circle", "square", "triangle"]
    rng = random.Random(seed)
    items = []
    for i in range(n):
        colour, shape = rng.choice(list(colours)), rng.choice(shapes)
        jitter = rng.randint(0, size // 8)

        def draw(colour=colour, shape=shape, jitter=jitter) -> Image.Image:
            image = Image.new("RGB", (size, size), "white")
            box = (size // 8 + jitter, size // 8, size - size // 8, size - size // 8 - jitter)
            d = ImageDraw.Draw(image)
            if shape == "circle":
                d.ellipse(box, fill=colours[colour])
            elif shape == "square":
                d.rectangle(box, fill=colours[colour])
            else:
                d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colours[colour])
            return image

        concept = f"{colour} {shape}"
        items.append(Item(draw, (f"a {concept}", f"a picture of a {concept}"), concept, f"syn{i:06d}"))
    return items


def load_items(source: str | Path, image_key: str = "image", caption_key: str = "caption") -> list[Item]:
    """Any supported source -> items. ``synthetic:N`` for N synthetic samples."""
    spec = str(source)
    if spec.startswith("synthetic:"):
        return synthetic_items(int(spec.split(":", 1)[1]))
    path = Path(spec)
    if ".tar" in spec and ("{" in spec or path.suffix == ".tar" or "::" in spec):
        items = _webdataset_items(spec)
    elif path.is_dir():
        manifest_shards = sorted(path.glob("train-*.tar"))
        items = _webdataset_items("::".join(map(str, manifest_shards))) if manifest_shards else _folder_items(path)
    elif not path.exists():
        raise DataError(f"data path {path} does not exist; give a CSV/TSV, JSONL, image folder or .tar shards")
    elif path.suffix.lower() in (".csv", ".tsv"):
        items = _table_items(path, image_key, caption_key)
    elif path.suffix.lower() in (".jsonl", ".json"):
        items = _jsonl_items(path, image_key, caption_key)
    else:
        raise DataError(f"{path}: unknown data format; use .csv, .tsv, .jsonl, a folder, or .tar shards")
    if not items:
        raise DataError(f"{spec} contains no image–caption samples")
    return items
