"""Write WebDataset shards from a table or an image folder, in the layout img2dataset writes.

    DIR/00000.tar            {key}.jpg|png|webp  {key}.txt (first caption)  {key}.json
    DIR/00000_stats.json     count, successes, failed_to_decode, no_caption (img2dataset's stats)
    DIR/00000.parquet        key, caption, status, error_message
    DIR/sizes.json           {"00000.tar": successes, ...}  (open_clip's; the streaming trainer
                             reads it for the epoch length)
    DIR/_shards.json         what was asked (source, shard size): a re-run must match it

Input row ``i`` goes to shard ``i // shard_size`` (a shard holds at most that many samples), so a
re-run is deterministic and resumes: a shard is done once its stats file exists (written last,
after the tar and parquet were renamed into place), and a killed run leaves at most temp files.
Original bytes are kept for jpg/png/webp; other formats are re-encoded to PNG. Every image is
decoded once (the guards of ``clipforge.images``) so a shard never holds an undecodable one.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import DataError
from ..images import decode_image, read_image_bytes
from .batch import skip_reason
from .items import Item, PathImage
from .sources import open_source

__all__ = ["ShardSummary", "write_shards"]

_KEEP = {"jpeg": "jpg", "png": "png", "webp": "webp"}  # PIL format -> member extension kept as is
_REQUEST = "_shards.json"
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA"}
_OWN = re.compile(r"\d{5}(\.tar|_stats\.json|\.parquet)")  # the files this module writes, and no others


@dataclass
class ShardSummary:
    out_dir: Path
    shards: int = 0
    samples: int = 0
    resumed: int = 0  # shards found done and kept
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> samples left out

    def __str__(self) -> str:
        left = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"
        return (f"wrote {self.samples} samples in {self.shards} shards to {self.out_dir} "
                f"({self.resumed} kept from an earlier run); left out: {left}")  # fmt: skip


def write_shards(source: str | Path, out_dir: str | Path, shard_size: int = 10_000, *, image_key: str = "image",
                 caption_key: str = "caption", overwrite: bool = False, progress: bool = True) -> ShardSummary:  # fmt: skip
    """Shards of ``source`` (CSV/TSV/JSONL table or image folder) in ``out_dir``; resumable."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise DataError(f"--shard-size must be a whole number >= 1 (got {shard_size!r})")
    items = open_source(source, image_key, caption_key).items
    out = Path(out_dir)
    _claim(out, {"source": str(Path(source).resolve()), "shard_size": shard_size}, overwrite)
    summary = ShardSummary(out)
    sizes: dict[str, int] = {}
    n_shards = -(-len(items) // shard_size)
    with _progress(progress, len(items)) as advance:
        for shard in range(n_shards):
            part = items[shard * shard_size : (shard + 1) * shard_size]
            stats = _read_stats(out / f"{shard:05d}_stats.json")
            if stats is None:
                stats = _write_shard(out, shard, part)
            else:
                summary.resumed += 1
            sizes[f"{shard:05d}.tar"] = stats["successes"]
            summary.samples += stats["successes"]
            for reason in ("failed_to_decode", "no_caption"):
                if stats.get(reason):
                    summary.skipped[reason.replace("_", " ")] = summary.skipped.get(reason.replace("_", " "), 0) + stats[reason]
            summary.shards += 1
            advance(len(part))
    _atomic_write(out / "sizes.json", json.dumps(sizes, indent=1).encode())
    return summary


def _claim(out: Path, request: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix two different requests in one folder (their shards would not match)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / _REQUEST
    if path.exists() and not overwrite:
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = None
        if earlier != request:
            raise DataError(f"{out} holds shards written from {earlier} and this run asks for {request}: "
                            "use another --out, or --overwrite to replace them")  # fmt: skip
    ours = [p for p in out.iterdir() if _OWN.fullmatch(p.name)]
    if ours and not path.exists() and not overwrite:
        raise DataError(f"{out} holds shard files clipforge did not write ({ours[0].name}, no {_REQUEST}): "
                        "use another --out, or --overwrite to replace them")  # fmt: skip
    for partial in out.glob(".*.tmp"):  # left by a killed run (one writer per folder at a time)
        partial.unlink(missing_ok=True)
    if overwrite:  # only the files this module writes: other files in the folder stay
        for old in ours:
            old.unlink()
    _atomic_write(path, json.dumps(request).encode())


def _write_shard(out: Path, shard: int, items: list[Item]) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    rows: list[dict[str, Any]] = []
    stats = {"count": len(items), "successes": 0, "failed_to_decode": 0, "no_caption": 0}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{shard:05d}.", suffix=".tar.tmp")
    os.close(fd)
    try:
        with wds.TarWriter(tmp, mtime=0) as sink:  # fixed times: a re-run writes the same bytes
            for i, item in enumerate(items):
                key = f"{shard:05d}{i:04d}"
                sample, error = _sample(key, item)
                if sample is None:
                    stats["no_caption" if error == "no caption" else "failed_to_decode"] += 1
                    rows.append({"key": key, "caption": None, "status": "failed", "error_message": error})
                    continue
                sink.write(sample)
                stats["successes"] += 1
                rows.append({"key": key, "caption": sample["txt"], "status": "success", "error_message": None})
        os.replace(tmp, out / f"{shard:05d}.tar")
    finally:
        Path(tmp).unlink(missing_ok=True)
    table = pa.Table.from_pylist(rows, schema=pa.schema([("key", pa.string()), ("caption", pa.string()),
                                                         ("status", pa.string()), ("error_message", pa.string())]))  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(table, buf)
    _atomic_write(out / f"{shard:05d}.parquet", buf.getvalue())
    _atomic_write(out / f"{shard:05d}_stats.json", json.dumps(stats).encode())  # last: marks the shard done
    return stats


def _sample(key: str, item: Item) -> tuple[dict[str, Any] | None, str]:
    captions = [c for c in item.captions if c.strip()]
    if not captions:
        return None, "no caption"
    try:  # a missing, empty or oversized file is skipped and counted like an undecodable one
        raw = read_image_bytes(item.open_image.path) if isinstance(item.open_image, PathImage) else None
        image = decode_image(raw) if raw is not None else item.open_image()
    except Exception as e:  # noqa: BLE001  any undecodable file (PIL raises many types)
        return None, f"{skip_reason(e)}: {e}"
    fmt = _format(raw) if raw is not None else ""
    if raw is not None and fmt in _KEEP:
        ext, data = _KEEP[fmt], raw
    else:
        buf = io.BytesIO()
        (image if image.mode in _PNG_MODES else image.convert("RGB")).save(buf, format="PNG")
        ext, data = "png", buf.getvalue()
    meta = {"key": key, "caption": captions[0], "captions": captions, "width": image.width, "height": image.height,
            "source": str(getattr(item.open_image, "path", item.key))}  # fmt: skip
    if item.concept:
        meta["concept"] = item.concept
    return {"__key__": key, ext: data, "txt": captions[0], "json": json.dumps(meta).encode()}, ""


def _format(raw: bytes) -> str:
    """The file's format from its header (decode_image's result may be a converted copy)."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        return (im.format or "").lower()


def _read_stats(path: Path) -> dict[str, Any] | None:
    if not path.is_file() or not path.with_name(path.name.replace("_stats.json", ".tar")).is_file():
        return None
    try:
        stats = json.loads(path.read_text())
        return stats if isinstance(stats.get("successes"), int) else None
    except ValueError:
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class _progress:
    """A rich progress bar of samples written (nothing when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(transient=False, console=Console(stderr=True))
        self.bar.start()
        task = self.bar.add_task("writing shards", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()
