"""Write image–caption records as WebDataset shards plus a JSON manifest, atomically, cached.

A build goes to a temporary directory that is renamed into place when complete, so an
interrupted build never leaves a half data set that a later run would trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from ..errors import DataError

__all__ = ["Record", "Manifest", "split_of", "write_dataset", "read_manifest", "SPLITS"]

SPLITS = ("train", "heldout")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Record:
    key: str
    image: Image.Image
    captions: list[str]
    concept: str  # the class name; skin-tone variants of one emoji share it


@dataclass
class Manifest:
    name: str
    source: str
    licence: str
    attribution: str
    params: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)  # split -> images
    concepts: dict[str, list[str]] = field(default_factory=dict)  # split -> sorted concepts
    shards: dict[str, list[str]] = field(default_factory=dict)  # split -> shard file names
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    root: str = ""

    def shard_paths(self, split: str) -> list[str]:
        return [str(Path(self.root) / s) for s in self.shards.get(split, [])]


def split_of(concept: str, holdout_fraction: float) -> str:
    """Deterministic concept-level split: a stable hash, so a concept never changes side."""
    bucket = int(hashlib.sha1(concept.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if bucket < holdout_fraction else "train"


def read_manifest(root: str | Path) -> Manifest | None:
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        manifest = Manifest(**data)
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{path} is not a clipforge data set manifest ({e}); delete the folder to rebuild") from None
    manifest.root = str(Path(root).resolve())
    return manifest


def write_dataset(out_dir: str | Path, manifest: Manifest, records: Iterable[Record], holdout_fraction: float,
                  shard_size: int = 1000) -> Manifest:  # fmt: skip
    import webdataset as wds

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        writers = {s: wds.ShardWriter(str(tmp / f"{s}-%05d.tar"), maxcount=shard_size, verbose=0) for s in SPLITS}
        concepts: dict[str, set[str]] = {s: set() for s in SPLITS}
        counts = dict.fromkeys(SPLITS, 0)
        for record in records:
            split = split_of(record.concept, holdout_fraction)
            writers[split].write(_sample(record))
            concepts[split].add(record.concept)
            counts[split] += 1
        for w in writers.values():
            w.close()
        manifest.counts = counts
        manifest.concepts = {s: sorted(c) for s, c in concepts.items()}
        manifest.shards = {s: sorted(p.name for p in tmp.glob(f"{s}-*.tar")) for s in SPLITS}
        (tmp / MANIFEST).write_text(json.dumps({k: v for k, v in asdict(manifest).items() if k != "root"}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.root = str(out_dir.resolve())
    return manifest


def _sample(record: Record) -> dict[str, Any]:
    buffer = io.BytesIO()
    record.image.save(buffer, format="PNG")
    meta = {"captions": record.captions, "concept": record.concept}
    return {"__key__": record.key, "png": buffer.getvalue(), "json": json.dumps(meta).encode()}
