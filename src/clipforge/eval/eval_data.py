"""Evaluation data: labelled images and captioned images from local files only (nothing
downloads at run time)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..data.items import Item
from ..data.shard_items import shard_items
from ..errors import DataError
from ..images import find_images, open_image
from ..wds import is_shard_pattern

__all__ = ["EvalData", "load_eval_data"]


@dataclass
class EvalData:
    name: str
    images: list[Callable[[], Image.Image]]
    labels: list[int] = field(default_factory=list)  # classification
    classnames: list[str] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)  # retrieval
    keys: list[str] = field(default_factory=list)


def _opener(path: Path) -> Callable[[], Image.Image]:
    return lambda: open_image(path).convert("RGB")


def _class_folders(root: Path) -> EvalData:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    data = EvalData(root.name, [], classnames=[c.replace("_", " ") for c in classes])
    for label, name in enumerate(classes):
        for path in find_images(root / name):
            data.images.append(_opener(path))
            data.labels.append(label)
            data.keys.append(str(path.relative_to(root)))
    return data


def _manifest_split(root: Path, split: str) -> EvalData:
    from ..datasets.shards import read_manifest

    manifest = read_manifest(root)
    if manifest is None or not manifest.shards.get(split):
        raise DataError(f"{root} has no split {split!r}; splits: {sorted(manifest.shards) if manifest else 'none'}")
    skipped: Counter[str] = Counter()
    return _from_items(f"{manifest.name}-{split}", shard_items(manifest.shard_paths(split), skipped))


def _from_items(name: str, items: list[Item]) -> EvalData:
    """Shard samples -> evaluation data: retrieval captions, and classes where every sample has
    a concept."""
    data = EvalData(name, [it.open_image for it in items], keys=[it.key for it in items],
                    captions=[list(it.captions) for it in items])  # fmt: skip
    if items and all(it.concept for it in items):
        data.classnames = sorted({it.concept for it in items})  # type: ignore[misc]
        index = {c: i for i, c in enumerate(data.classnames)}
        data.labels = [index[it.concept] for it in items]  # type: ignore[index]
    return data


def _table(path: Path) -> EvalData:
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    if not rows or "image" not in rows[0]:
        raise DataError(f"{path} needs an 'image' column plus 'label' (classification) or 'caption(s)' (retrieval)")
    data = EvalData(path.stem, [_opener(path.parent / r["image"]) for r in rows], keys=[r["image"] for r in rows])
    if "label" in rows[0]:
        data.classnames = sorted({str(r["label"]) for r in rows})
        index = {c: i for i, c in enumerate(data.classnames)}
        data.labels = [index[str(r["label"])] for r in rows]
    caps = [r.get("captions") or r.get("caption") for r in rows]
    if all(caps):
        data.captions = [c if isinstance(c, list) else [x.strip() for x in str(c).split("|")] for c in caps]
    return data


def _cifar10(root: Path) -> EvalData:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=False, download=False)
    except RuntimeError:
        raise DataError(
            f"CIFAR-10 is not at {root}: expected {root}/cifar-10-batches-py/test_batch (and batches.meta); "
            "place the extracted python version there, nothing is downloaded"
        ) from None
    return EvalData("cifar10", [lambda im=im: im for im, _ in ds], labels=[int(y) for _, y in ds], classnames=list(ds.classes))


def _shards(pattern: str) -> EvalData:
    """WebDataset shards (the sample rules of ``clipforge.wds``)."""
    from ..data.sources import load_items

    return _from_items(Path(pattern.split("::")[0]).stem, load_items(pattern))


def load_eval_data(spec: str, split: str = "heldout") -> EvalData:
    """A class-folder tree, a built data set directory (``split``), WebDataset shards
    (``shard-{000..009}.tar``), a CSV/TSV/JSONL file, or ``cifar10:ROOT`` for torchvision's
    CIFAR-10 files already on disk."""
    if spec.startswith("cifar10:"):
        return _cifar10(Path(spec.split(":", 1)[1]))
    if is_shard_pattern(spec):
        return _shards(spec)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"evaluation data {path} does not exist")
    if path.is_dir():
        data = _manifest_split(path, split) if (path / "manifest.json").is_file() else _class_folders(path)
    else:
        data = _table(path)
    if not data.images:
        raise DataError(f"{spec} holds no images")
    return data
