"""Build a data set: render source files in a process pool, write WebDataset shards per split
and a manifest, atomically, and reuse an earlier build with the same parameters.

A build goes to a temporary folder beside ``out_dir`` that is renamed into place when complete,
so an interrupted build never leaves a half data set that a later run would trust. Samples are
written in the order of the plan whatever the number of processes, so a build is reproducible.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from PIL import Image

from ..errors import DataError
from .manifest import MANIFEST, SPLITS, Manifest, is_current, read_manifest, split_of, write_manifest

# Manifest, read_manifest and split_of are re-exported: callers imported them from here first.
__all__ = ["Job", "Plan", "Renderer", "build_cached", "check_params", "default_workers", "spread", "Manifest",
           "read_manifest", "split_of", "SPLITS"]  # fmt: skip

SHARD_SIZE = 1000  # samples per shard: ~3 MB at 64 px, small enough to shuffle shards, few files
_TAR_MTIME = 0.0  # fixed member times: the same inputs give byte-identical shards

# (source file, image size) -> RGB image. A module-level function, so worker processes can
# receive it by name.
Renderer = Callable[[str, int], Image.Image]


@dataclass(frozen=True)
class Job:
    """One sample to render: where its image comes from and what its JSON says."""

    key: str
    path: str
    captions: tuple[str, ...]
    concept: str  # the class name and the unit of the split
    meta: dict[str, Any] = field(default_factory=dict)  # extra JSON fields (file, skin tone, topic)


@dataclass
class Plan:
    """What a builder wants built: the manifest's descriptive fields and the jobs."""

    manifest: Manifest
    jobs: list[Job]
    render: Renderer
    skipped: Counter[str] = field(default_factory=Counter)  # files left out while planning


def spread(items: list[Any], limit: int | None) -> list[Any]:
    """``limit`` items evenly spaced over the sorted list, so a small build still spans many
    kinds of image (emoji, topics) instead of the first few files."""
    if not limit or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use, not the machine's
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_params(image_size: int, holdout_fraction: float, val_fraction: float, limit: int | None) -> None:
    if image_size < 8:
        raise DataError(f"image_size must be at least 8 pixels, got {image_size}")
    if not (0 <= holdout_fraction and 0 <= val_fraction and holdout_fraction + val_fraction < 1):
        raise DataError(f"holdout_fraction ({holdout_fraction}) and val_fraction ({val_fraction}) must be >= 0 "
                        "and leave some concepts for training (sum < 1)")  # fmt: skip
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of images or None, got {limit}")


def build_cached(out_dir: str | Path, params: dict[str, Any], make_plan: Callable[[], Plan], *, force: bool,
                 workers: int | None) -> Manifest:  # fmt: skip
    """Reuse the build in ``out_dir`` when its parameters match and its shards are whole;
    otherwise plan, render and write a new one. Concurrent builders of one folder take turns."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out_dir):
        existing = read_manifest(out_dir) if (out_dir / MANIFEST).is_file() else None
        if not force and is_current(existing, params):
            return existing  # type: ignore[return-value]
        _check_replaceable(out_dir)
        plan = make_plan()
        plan.manifest.params = params
        return _write(out_dir, plan, params, workers if workers is not None else default_workers())


@contextlib.contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    """An advisory lock beside ``out_dir``: two processes (say, two ranks) asking for the same
    data set build it once; the second finds the first's build current."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, the atomic rename still keeps the folder whole
        yield
        return
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_replaceable(out_dir: Path) -> None:
    """Only an empty folder or an earlier build may be replaced: never a folder of someone's files."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file; give a folder for the data set")
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise DataError(f"{out_dir} is not empty and holds no clipforge data set ({MANIFEST} is missing); "
                        "choose a new or empty folder, nothing there was changed")  # fmt: skip


def _write(out_dir: Path, plan: Plan, params: dict[str, Any], workers: int) -> Manifest:
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.building-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a data set is meant to be shared
        manifest = _write_shards(tmp, plan, params, workers)
        manifest.seconds = round(time.perf_counter() - started, 2)
        write_manifest(tmp, manifest)  # last: its presence means the build is complete
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.root = str(out_dir.resolve())
    return manifest


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    # A folder cannot be renamed over a non-empty one: move the old build aside first.
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_shards(tmp: Path, plan: Plan, params: dict[str, Any], workers: int) -> Manifest:
    manifest, skipped = plan.manifest, Counter(plan.skipped)
    writers: dict[str, Any] = {}
    concepts: dict[str, set[str]] = {s: set() for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    keys = _unique_keys(plan.jobs)
    try:
        pngs = _render_all(plan.jobs, plan.render, params["image_size"], workers)
        for job, key, png in zip(plan.jobs, keys, pngs, strict=True):
            if isinstance(png, str):  # the error's name: one bad file costs one image, not the build
                skipped[f"render failed: {png}"] += 1
                continue
            split = split_of(job.concept, params["holdout_fraction"], params.get("val_fraction", 0.0))
            if split not in writers:
                writers[split] = _shard_writer(tmp, split)
            writers[split].write(_sample(key, png, job, manifest.name, split))
            concepts[split].add(job.concept)
            counts[split] += 1
    finally:
        for writer in writers.values():
            writer.close()
    if not sum(counts.values()):
        raise DataError(f"the {manifest.name} build produced no images ({dict(skipped)} skipped); nothing was written")
    manifest.counts, manifest.skipped = counts, dict(sorted(skipped.items()))
    manifest.concepts = {s: sorted(c) for s, c in concepts.items()}
    manifest.shards = {s: sorted(p.name for p in tmp.glob(f"{s}-*.tar")) for s in SPLITS}
    manifest.shard_bytes = {p.name: p.stat().st_size for p in sorted(tmp.glob("*.tar"))}
    return manifest


def _shard_writer(tmp: Path, split: str) -> Any:
    import webdataset as wds

    # Opened on a split's first sample, so an empty split has no (empty) shard file.
    return wds.ShardWriter(str(tmp / f"{split}-%05d.tar"), maxcount=SHARD_SIZE, verbose=0, mtime=_TAR_MTIME)


def _unique_keys(jobs: Sequence[Job]) -> list[str]:
    """WebDataset keys end at the first dot of a file name, so dots become underscores; a key
    that repeats gets a numeric suffix instead of silently merging two samples."""
    seen: Counter[str] = Counter()
    out = []
    for job in jobs:
        key = job.key.replace(".", "_")
        seen[key] += 1
        out.append(key if seen[key] == 1 else f"{key}_{seen[key]}")
    return out


def _sample(key: str, png: bytes, job: Job, source: str, split: str) -> dict[str, Any]:
    meta = {"captions": list(job.captions), "concept": job.concept, "source": source, "split": split, **job.meta}
    return {"__key__": key, "png": png, "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}


def _render_all(jobs: Sequence[Job], render: Renderer, size: int, workers: int) -> Iterator[bytes | str]:
    """PNG bytes (or an error name) per job, in job order."""
    task = functools.partial(_render_png, render, size)
    paths = [job.path for job in jobs]
    if workers <= 1 or len(paths) < 64:  # a pool costs more to start than a few images take
        yield from map(task, paths)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork where there is one (as torch's DataLoader does): forkserver and spawn re-run the
    # caller's main script in each worker, which breaks scripts without a __main__ guard and
    # stdin. The workers only call PIL and cairosvg, never torch, so its threads do not matter.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(task, paths, chunksize=max(1, min(64, len(paths) // (workers * 8))))


def _render_png(render: Renderer, size: int, path: str) -> bytes | str:
    try:
        image = render(path, size)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    except Exception as e:  # noqa: BLE001  a malformed file must cost one image, not the build
        return type(e).__name__
