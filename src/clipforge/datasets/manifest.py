"""The manifest of a built data set: what is in it, where it came from, how it was split.

A build writes ``manifest.json`` last, beside its shards; a later build with the same
parameters finds it and reuses the data set (see ``is_current``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["SPLITS", "MANIFEST", "Manifest", "split_of", "read_manifest", "write_manifest", "is_current",
           "class_names"]  # fmt: skip

# Concept-level splits: "val" for choosing settings, "heldout" reported once, both never trained on.
SPLITS = ("train", "val", "heldout")
MANIFEST = "manifest.json"


@dataclass
class Manifest:
    name: str
    source: str
    licence: str
    attribution: str
    params: dict[str, Any]  # the build parameters; equal parameters mean a reusable build
    counts: dict[str, int] = field(default_factory=dict)  # split -> images
    concepts: dict[str, list[str]] = field(default_factory=dict)  # split -> sorted concepts
    shards: dict[str, list[str]] = field(default_factory=dict)  # split -> shard file names
    shard_bytes: dict[str, int] = field(default_factory=dict)  # shard file name -> size (integrity check)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0  # build time
    root: str = ""  # where it was read from; not stored

    @property
    def image_size(self) -> int:
        return int(self.params["image_size"])

    @property
    def builder_version(self) -> int:
        return int(self.params["builder_version"])

    def shard_paths(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        return [str(Path(self.root) / s) for s in self.shards.get(split, [])]

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "root"}, indent=2, ensure_ascii=False)


def split_of(concept: str, holdout_fraction: float, val_fraction: float = 0.0) -> str:
    """Deterministic concept-level split: a stable hash (sha1, not Python's salted ``hash``), so a
    concept lands on the same side in every build, on every machine, whatever else is built.

    Held-out takes the lowest buckets and val the next, so adding a val split leaves the held-out
    concepts as they were."""
    bucket = int(hashlib.sha1(concept.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < holdout_fraction:
        return "heldout"
    return "val" if bucket < holdout_fraction + val_fraction else "train"


def read_manifest(root: str | Path) -> Manifest | None:
    """The manifest in ``root``, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(Manifest)} - {"root"}
        # Keys a newer builder added are ignored, so old code can still read new data sets.
        manifest = Manifest(**{k: v for k, v in data.items() if k in known})
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        raise DataError(f"{path} is not a clipforge data set manifest ({e}); delete the folder to rebuild it") from None
    manifest.root = str(Path(root).resolve())
    return manifest


def write_manifest(root: Path, manifest: Manifest) -> None:
    (root / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")


def is_current(manifest: Manifest | None, params: dict[str, Any]) -> bool:
    """A build with these parameters that is still complete on disk (no shard missing or cut)."""
    if manifest is None or manifest.params != params:
        return False
    root = Path(manifest.root)
    for names in manifest.shards.values():
        for name in names:
            path = root / name
            if not path.is_file() or path.stat().st_size != manifest.shard_bytes.get(name, -1):
                return False
    return True


def class_names(manifest: Manifest, split: str = "heldout") -> list[str]:
    """The sorted concepts of one split: the class names of a zero-shot classifier."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    names = manifest.concepts.get(split, [])
    if not names:
        raise DataError(f"the {manifest.name} data set in {manifest.root} has no concepts in its {split!r} split; "
                        "rebuild it with a larger holdout_fraction/val_fraction or without a limit")  # fmt: skip
    return list(names)


def describe(manifest: Manifest) -> str:
    """A few lines for people: what the data set holds, split by split."""
    lines = [f"{manifest.name} in {manifest.root}: {manifest.image_size} px, built in {manifest.seconds:.1f} s",
             f"source: {manifest.source}; licence: {manifest.licence}"]  # fmt: skip
    for split in SPLITS:
        lines.append(f"  {split:8s} {manifest.counts.get(split, 0):6,} images  "
                     f"{len(manifest.concepts.get(split, [])):5,} concepts  {len(manifest.shards.get(split, []))} shard(s)")  # fmt: skip
    if manifest.skipped:
        lines.append("skipped: " + ", ".join(f"{why} {n:,}" for why, n in sorted(manifest.skipped.items())))
    return "\n".join(lines)
