"""Builders of real image–caption data sets, written as WebDataset shards + a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import DataError
from .shards import Manifest, read_manifest

__all__ = ["BUILDERS", "build_dataset", "Manifest", "read_manifest"]


def _openmoji(out_dir: Path, **kw) -> Manifest:
    from .openmoji import build_openmoji

    return build_openmoji(out_dir, **kw)


def _tuxpaint(out_dir: Path, **kw) -> Manifest:
    from .clipart import build_tuxpaint

    return build_tuxpaint(out_dir, **kw)


def _openclipart(out_dir: Path, **kw) -> Manifest:
    from .clipart import build_openclipart

    return build_openclipart(out_dir, **kw)


# name -> builder(out_dir, image_size=, holdout_fraction=, force=, limit=)
BUILDERS: dict[str, Callable[..., Manifest]] = {"openmoji": _openmoji, "tuxpaint": _tuxpaint, "openclipart": _openclipart}


def build_dataset(name: str, out_dir: str | Path, **kwargs) -> Manifest:
    if name not in BUILDERS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(BUILDERS)}")
    return BUILDERS[name](Path(out_dir), **kwargs)
