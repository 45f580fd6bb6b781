"""Builders of real image–caption data sets, written as WebDataset shards + a manifest.

    manifest = build_dataset("openmoji", "data/openmoji-64")       # cached: a second call reuses it
    manifest.shard_paths("train")                                  # -> [".../train-00000.tar", ...]
    class_names(manifest, "heldout")                               # concepts never trained on

Each sample: ``__key__``, ``png`` (RGB on white) and ``json`` = {"captions": [...], "concept",
"source", "split", ...}. Splits are by concept (a stable hash of its name): "train", "val" and
"heldout" never share a concept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import DataError
from .manifest import SPLITS, Manifest, class_names, read_manifest, split_of

__all__ = ["BUILDERS", "SPLITS", "build_dataset", "class_names", "Manifest", "read_manifest", "split_of"]


def _openmoji(out_dir: Path, **kw: Any) -> Manifest:
    from .openmoji import build_openmoji

    return build_openmoji(out_dir, **kw)


def _tuxpaint(out_dir: Path, **kw: Any) -> Manifest:
    from .clipart import build_tuxpaint

    return build_tuxpaint(out_dir, **kw)


def _openclipart(out_dir: Path, **kw: Any) -> Manifest:
    from .clipart import build_openclipart

    return build_openclipart(out_dir, **kw)


# name -> builder(out_dir, image_size=, holdout_fraction=, val_fraction=, force=, limit=, workers=)
BUILDERS: dict[str, Callable[..., Manifest]] = {
    "openmoji": _openmoji,
    "tuxpaint": _tuxpaint,
    "openclipart": _openclipart,
}


def build_dataset(name: str, out_dir: str | Path, image_size: int = 64, holdout_fraction: float = 0.1,
                  val_fraction: float = 0.05, force: bool = False, limit: int | None = None,
                  workers: int | None = None) -> Manifest:  # fmt: skip
    """Build the data set ``name`` into ``out_dir`` (or reuse the build there when its
    parameters match). ``limit`` takes that many images spread over the whole set (for tests);
    ``workers`` rendering processes (default: the usable cores)."""
    if name not in BUILDERS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(BUILDERS)}")
    return BUILDERS[name](Path(out_dir), image_size=image_size, holdout_fraction=holdout_fraction,
                          val_fraction=val_fraction, force=force, limit=limit, workers=workers)  # fmt: skip
