"""Embed a whole collection into an output folder of shards, resumable after a crash.

Layout of OUT (the one clip-retrieval's inference writes, so its tools read ours)::

    img_emb/img_emb_00000.npy            (rows, embed_dim) float32 or float16, L2-normalised
    metadata/metadata_00000.parquet      one row per embedding: index, path, key, caption, ...
    skipped.jsonl                        {"index", "path", "reason"} per item left out
    manifest.json                        model, precision, source, shard size, shards done

(``text_emb/text_emb_*.npy`` for texts.) Shard k holds the items ``[k * shard_size, (k + 1) *
shard_size)`` of the source order, minus the unreadable ones, so a shard's rows depend only on the
source and the shard size: a re-run skips the shards the manifest lists as done and recomputes the
rest. Every file is written to a temporary name and renamed, and the manifest last, so a killed
run leaves either a finished shard or none.

Images are read, hashed, decoded and preprocessed in DataLoader worker processes; the main
process only runs the engine. Model time and wall time are both measured, so the summary shows
whether decoding or the model is the bottleneck.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..checkpoint.io import atomic_path
from ..errors import ClipforgeError, DataError
from ..index.embed import IMAGE_SUFFIXES, MAX_IMAGE_BYTES, decode_image, list_image_files, read_image_file
from ..models.clip import CLIP
from ..transforms import Preprocess
from .engine import Engine, EngineConfig, model_fingerprint

__all__ = [
    "Record",
    "Collection",
    "EmbedSummary",
    "open_images",
    "open_texts",
    "iter_image_batches",
    "embed_collection",
    "default_workers",
    "model_fingerprint",
]

FORMAT = "clipforge-embeddings"
FORMAT_VERSION = 1
TAR_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")  # webdataset's usual image extensions, in preference order
ProgressFn = Callable[[int, int], None]  # (items done, items in the source)


# --- sources -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)  # slots: a million records stay a few hundred MB
class Record:
    """Where one item's bytes are; small and picklable, so workers get it by value."""

    path: str  # the image file, or the tar shard holding it
    key: str | None = None  # the sample key inside a tar shard
    offset: int = -1  # byte offset of the image inside an uncompressed shard
    size: int = -1
    caption: str | None = None
    data: bytes | None = None  # the image of a compressed shard, read while listing it

    @property
    def ref(self) -> str:
        return self.path if self.key is None else f"{self.path}/{self.key}"


@dataclass
class Collection:
    """A source resolved to an ordered list of items."""

    kind: str  # "image" or "text"
    spec: str  # the source as given
    records: list[Record] = field(default_factory=list)  # images
    texts: list[str] = field(default_factory=list)  # texts
    lines: list[int] = field(default_factory=list)  # line number of each text
    fingerprint: str = ""  # identifies the items and their order, independent of the working directory
    skipped: list[dict] = field(default_factory=list)  # found while listing (index -1)

    def __len__(self) -> int:
        return len(self.records) if self.kind == "image" else len(self.texts)


def open_images(source: str | Path) -> Collection:
    """A folder (recursive), one image, a text file of image paths, or WebDataset shards (a
    brace pattern ``data/{000..009}.tar``, ``a.tar::b.tar``, or a folder of ``.tar`` files)."""
    spec = str(source)
    path = Path(spec)
    if ".tar" in spec and ("{" in spec or "::" in spec or path.suffix in (".tar", ".gz")):
        from ..data.wds import expand_shards

        return _tar_collection(spec, expand_shards(spec))
    if path.is_dir() and not _has_images(path) and sorted(path.glob("*.tar")):
        return _tar_collection(spec, [str(p) for p in sorted(path.glob("*.tar"))])
    if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
        return _list_collection(spec, path)
    paths, root = list_image_files(path)
    names = [p.relative_to(root).as_posix() for p in paths]
    return Collection("image", spec, [Record(str(p)) for p in paths], fingerprint=_digest(names))


def open_texts(source: str | Path) -> Collection:
    """A UTF-8 text file, one text per line; blank lines are left out (the metadata keeps each
    text's line number)."""
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a text file with one text per line")
    numbered = [(i, line.strip()) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())]
    numbered = [(i, text) for i, text in numbered if text]
    if not numbered:
        raise DataError(f"{path} has no non-empty lines; give a text file with one text per line")
    texts = [t for _, t in numbered]
    return Collection("text", str(source), texts=texts, lines=[i for i, _ in numbered], fingerprint=_digest(texts))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def _digest(names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8", errors="surrogateescape") + b"\n")
    return h.hexdigest()


def _list_collection(spec: str, listing: Path) -> Collection:
    """A text file of image paths; relative paths are relative to the list file's folder, so a
    list travels with its images."""
    lines = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{listing} lists no image paths; give one image path per line")
    records = [Record(str(listing.parent / line)) for line in lines]  # an absolute line stays absolute
    return Collection("image", spec, records, fingerprint=_digest(lines))


def _tar_collection(spec: str, urls: list[str]) -> Collection:
    collection = Collection("image", spec)
    names = []
    for url in urls:
        for record in _tar_records(url, collection.skipped):
            collection.records.append(record)
            names.append(f"{Path(url).name}/{record.key}")
    if not collection.records:
        raise DataError(f"{spec} holds no samples with an image ({', '.join(TAR_IMAGE_KEYS)}); check the shards")
    collection.fingerprint = _digest(names)
    return collection


def _tar_records(url: str, skipped: list[dict]) -> list[Record]:
    """One shard's samples in file order. Only headers and captions are read from an uncompressed
    shard (workers read each image at its offset), so memory does not grow with the collection."""
    samples: dict[str, dict[str, tarfile.TarInfo | bytes]] = {}
    try:
        with tarfile.open(url) as tar:
            compressed = not url.endswith(".tar")
            for member in tar:
                _add_member(tar, member, samples, compressed)
    except (tarfile.TarError, OSError, EOFError) as e:  # a damaged shard keeps the samples before the damage
        skipped.append({"index": -1, "path": url, "reason": f"shard unreadable after {len(samples)} samples ({e})"})
    records = []
    for key, parts in samples.items():
        record = _tar_record(url, key, parts)
        if record is None:
            skipped.append({"index": -1, "path": f"{url}/{key}", "reason": "sample without an image"})
        else:
            records.append(record)
    return records


def _add_member(tar: tarfile.TarFile, member: tarfile.TarInfo, samples: dict, compressed: bool) -> None:
    # webdataset's rule (tariterators.base_plus_ext): the key ends at the first dot of the file name.
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", member.name)
    if not member.isfile() or match is None:
        return
    key, ext = match.group(1), match.group(2).lower()
    parts = samples.setdefault(key, {})
    if ext in ("txt", "json") or (compressed and ext in TAR_IMAGE_KEYS):
        parts[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    elif ext in TAR_IMAGE_KEYS:
        parts[ext] = member


def _tar_record(url: str, key: str, parts: dict) -> Record | None:
    ext = next((e for e in TAR_IMAGE_KEYS if e in parts), None)
    if ext is None:
        return None
    caption = _tar_caption(parts)
    image = parts[ext]
    if isinstance(image, bytes):
        return Record(url, key, caption=caption, data=image)
    return Record(url, key, offset=image.offset_data, size=image.size, caption=caption)


def _tar_caption(parts: dict) -> str | None:
    if "txt" in parts:
        return parts["txt"].decode("utf-8", errors="replace").strip() or None
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        # clipforge's data sets store a list of captions (data/wds.py); the metadata keeps the first.
        caption = meta.get("caption") or next(iter(meta.get("captions") or []), None)
        return str(caption) if caption else None
    return None


# --- decoding in workers -------------------------------------------------------------------------


class _Decoder(torch.utils.data.Dataset):
    """Item -> (index, metadata row, (3, H, W) tensor) or (index, None, reason). Runs in workers."""

    def __init__(self, records: list[Record], preprocess: Preprocess) -> None:
        self.records, self.preprocess = records, preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, dict | None, torch.Tensor | str]:
        record = self.records[i]
        try:
            row, tensor = _decode(record, self.preprocess)
        # One unreadable file must not cost the rest: every failure (PIL raises many types on
        # corrupt input, a transform may reject an odd mode) becomes a skipped item.
        except Exception as e:  # noqa: BLE001
            return i, None, str(e) if isinstance(e, (DataError, OSError)) else f"{type(e).__name__}: {e}"
        row["index"] = i
        return i, row, tensor


def _decode(record: Record, preprocess: Preprocess) -> tuple[dict, torch.Tensor]:
    if record.key is None:  # a file: read_image_file also picks up a sidecar caption (IMAGE.txt)
        meta, tensor = read_image_file(Path(record.path), None, preprocess)
        return _row(record, meta.caption, meta.width, meta.height, meta.sha256), tensor
    data = record.data if record.data is not None else _read_member(record)
    image = decode_image(data)
    row = _row(record, record.caption, image.width, image.height, hashlib.sha256(data).hexdigest())
    return row, preprocess(image)


def _read_member(record: Record) -> bytes:
    if record.size > MAX_IMAGE_BYTES:
        raise DataError(f"image is {record.size:,} bytes, over the limit of {MAX_IMAGE_BYTES:,}")
    with open(record.path, "rb") as f:
        f.seek(record.offset)
        return f.read(record.size)


def _row(record: Record, caption: str | None, width: int, height: int, sha256: str) -> dict:
    return {"path": record.path, "key": record.key, "caption": caption, "width": width, "height": height,
            "sha256": sha256}  # fmt: skip


@dataclass
class _Batch:
    """What a worker hands the main process: decoded rows stacked, failures listed."""

    indices: list[int]  # every item of the batch, readable or not
    rows: list[dict]
    images: torch.Tensor | None  # (len(rows), 3, H, W)
    skipped: list[tuple[int, str]]  # (index, reason)


def _collate(samples: list) -> _Batch:
    good = [(row, x) for _, row, x in samples if row is not None]
    images = torch.stack([x for _, x in good]) if good else None  # stacked in the worker, not the main process
    skipped = [(i, x) for i, row, x in samples if row is None]
    return _Batch([i for i, _, _ in samples], [r for r, _ in good], images, skipped)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def iter_image_batches(
    engine: Engine, preprocess: Preprocess, records: list[Record], batches: Sequence[Sequence[int]], workers: int
) -> Iterator[tuple[_Batch, np.ndarray, float]]:
    """Decode ``batches`` (sequences of item indices) in ``workers`` processes and embed them in this
    one, in order. Yields (batch, (rows, embed_dim) float32 vectors, seconds spent in the engine)."""
    loader = torch.utils.data.DataLoader(
        _Decoder(records, preprocess), batch_sampler=batches, collate_fn=_collate,
        num_workers=min(workers, len(batches)), pin_memory=engine.device.type == "cuda",
    )  # fmt: skip
    for batch in loader:
        if batch.images is None:
            yield batch, np.zeros((0, engine.embed_dim), np.float32), 0.0
            continue
        start = time.perf_counter()
        vectors = engine.encode_images(batch.images).cpu().numpy()  # (rows, embed_dim); .cpu() waits for a GPU
        yield batch, vectors, time.perf_counter() - start


# --- the output folder ---------------------------------------------------------------------------


@dataclass
class EmbedSummary:
    """What ``embed_collection`` did. Rates count only the items processed by this call."""

    out: Path
    kind: str  # "image" or "text"
    items: int  # in the source
    rows: int  # embeddings in OUT, all shards
    skipped: int  # items left out (unreadable), all shards
    shards: int
    shards_reused: int  # finished by an earlier run, not recomputed
    processed: int  # items read and embedded (or skipped) by this call
    embedded: int  # rows embedded by this call
    engine_seconds: float  # time inside the engine
    wall_seconds: float  # time of the whole call, decoding and writing included
    precision: str
    embed_dim: int
    skipped_items: list[dict] = field(default_factory=list)  # {"index", "path", "reason"}

    @property
    def model_items_per_s(self) -> float:
        return self.embedded / self.engine_seconds if self.engine_seconds > 0 else 0.0

    @property
    def end_to_end_items_per_s(self) -> float:
        return self.processed / self.wall_seconds if self.wall_seconds > 0 else 0.0


def _emb_path(out: Path, kind: str, shard: int) -> Path:
    prefix = "img" if kind == "image" else "text"
    return out / f"{prefix}_emb" / f"{prefix}_emb_{shard:05d}.npy"


def _meta_path(out: Path, shard: int) -> Path:
    return out / "metadata" / f"metadata_{shard:05d}.parquet"


def _settings(collection: Collection, engine: Engine, fingerprint: str, shard_size: int, dtype: str) -> dict:
    """The manifest entries a resumed run must match exactly."""
    return {"kind": collection.kind, "model_fingerprint": fingerprint, "precision": engine.precision,
            "dtype": dtype, "shard_size": shard_size, "embed_dim": engine.embed_dim,
            "source_fingerprint": collection.fingerprint, "items": len(collection)}  # fmt: skip


def _read_manifest(out: Path) -> dict | None:
    path = out / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise DataError(f"{path} is not valid JSON; delete the folder or pass --overwrite") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{out} holds a manifest.json that clipforge embed did not write; choose another --out")
    return manifest


def _prepare_out(out: Path, settings: dict, overwrite: bool) -> list[dict]:
    """-> the shards an earlier run finished (each {"rows", "skipped"}), after checking it ran
    with the same model, source and settings."""
    manifest = _read_manifest(out)
    if overwrite:
        _clear(out)
        return []
    if manifest is None:
        if out.exists() and any(out.iterdir()):
            raise DataError(f"{out} is not empty and holds no clipforge embeddings; choose an empty or new --out "
                            "(or pass --overwrite to write into it)")  # fmt: skip
        return []
    _check_same(out, manifest, settings)
    done = manifest.get("shards", [])
    kind = settings["kind"]
    # Trust a finished shard only while its files are there (someone may have deleted one).
    n = 0
    while n < len(done) and _emb_path(out, kind, n).is_file() and _meta_path(out, n).is_file():
        n += 1
    return done[:n]


def _check_same(out: Path, manifest: dict, settings: dict) -> None:
    what = {"kind": "item kind", "model_fingerprint": "model (weights)", "precision": "engine precision",
            "dtype": "output dtype", "shard_size": "shard size", "embed_dim": "embedding size",
            "source_fingerprint": "source items", "items": "number of source items"}  # fmt: skip
    for key, name in what.items():
        if manifest.get(key) != settings[key]:
            hint = " (an architecture name alone means new random weights on every run)"
            raise DataError(
                f"{out} holds embeddings made with another {name}{hint if key == 'model_fingerprint' else ''}: "
                f"{manifest.get(key)!r} there, {settings[key]!r} now (source {manifest.get('source')!r}, model "
                f"{manifest.get('model')!r}); resume with the same arguments, choose another --out, or pass "
                "--overwrite to start again"
            )


def _clear(out: Path) -> None:
    """Remove what an earlier run wrote (and only that: OUT may hold the user's other files)."""
    for name in ("img_emb", "text_emb", "metadata"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("skipped.jsonl", "manifest.json"):
        (out / name).unlink(missing_ok=True)


def _write_json(path: Path, value: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _write_skipped(out: Path, skipped: list[dict]) -> None:
    with atomic_path(out / "skipped.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(s) + "\n" for s in skipped), encoding="utf-8")


def _read_skipped(out: Path, before: int) -> list[dict]:
    """Items skipped by an earlier run in its finished shards (those before item ``before``)."""
    path = out / "skipped.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if 0 <= r["index"] < before]


def _write_shard(out: Path, kind: str, shard: int, vectors: np.ndarray, rows: list[dict], dtype: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(_emb_path(out, kind, shard), suffix=".npy") as tmp:
        np.save(tmp, vectors.astype(dtype, copy=False))
    columns = {name: [r[name] for r in rows] for name in _columns(kind)}
    table = pa.table(columns, schema=_schema(kind))
    with atomic_path(_meta_path(out, shard), suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def _columns(kind: str) -> tuple[str, ...]:
    return ("index", "path", "key", "caption", "width", "height", "sha256") if kind == "image" else ("index", "text")


def _schema(kind: str):  # noqa: ANN202  (pyarrow is imported lazily)
    import pyarrow as pa

    if kind == "text":
        return pa.schema([("index", pa.int64()), ("text", pa.string())])
    return pa.schema([("index", pa.int64()), ("path", pa.string()), ("key", pa.string()), ("caption", pa.string()),
                      ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string())])  # fmt: skip


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class _Run:
    """State of one call: the output, what is done, the running totals."""

    out: Path
    collection: Collection
    engine: Engine
    manifest: dict
    shard_size: int
    dtype: str
    skipped: list[dict]
    progress: ProgressFn | None
    on_shard: Callable[[int], None] | None
    start: int = 0  # items in the shards finished before this call
    engine_seconds: float = 0.0
    processed: int = 0
    embedded: int = 0

    @property
    def shards_done(self) -> int:
        return len(self.manifest["shards"])

    def finish_shard(self, vectors: list[np.ndarray], rows: list[dict], skipped: list[dict]) -> None:
        shard = self.shards_done
        dim = self.engine.embed_dim
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)  # (rows, embed_dim)
        _write_shard(self.out, self.collection.kind, shard, stacked, rows, self.dtype)
        self.skipped.extend(skipped)
        _write_skipped(self.out, self.collection.skipped + self.skipped)
        self.manifest["shards"].append({"rows": len(rows), "skipped": len(skipped)})
        self.manifest["complete"] = self.shards_done * self.shard_size >= len(self.collection)
        _write_json(self.out / "manifest.json", self.manifest)  # last: the shard counts as done only now
        if self.on_shard:
            self.on_shard(shard)

    def advance(self, n: int) -> None:
        self.processed += n
        if self.progress:
            self.progress(self.start + self.processed, len(self.collection))


def _shard_batches(start: int, n: int, shard_size: int, batch_size: int) -> list[list[range]]:
    """Item indices from ``start``, cut into shards, each cut into batches (none straddles a shard).
    Ranges, not lists: ten million items cost a few MB, not hundreds."""
    shards = []
    for first in range(start, n, shard_size):
        last = min(first + shard_size, n)
        shards.append([range(b, min(b + batch_size, last)) for b in range(first, last, batch_size)])
    return shards


def _run_images(run: _Run, preprocess: Preprocess, batch_size: int, workers: int) -> None:
    start = run.shards_done * run.shard_size
    shards = _shard_batches(start, len(run.collection), run.shard_size, batch_size)
    flat = [b for shard in shards for b in shard]
    batches = iter_image_batches(run.engine, preprocess, run.collection.records, flat, workers)
    for shard in shards:
        vectors, rows, skipped = [], [], []
        for _ in shard:
            batch, vecs, seconds = next(batches)
            run.engine_seconds += seconds
            run.embedded += len(batch.rows)
            vectors.append(vecs)
            rows.extend(batch.rows)
            records = run.collection.records
            skipped.extend({"index": i, "path": records[i].ref, "reason": why} for i, why in batch.skipped)
            run.advance(len(batch.indices))
        run.finish_shard(vectors, rows, skipped)


def _run_texts(run: _Run, batch_size: int) -> None:
    texts, lines = run.collection.texts, run.collection.lines
    for shard in _shard_batches(run.shards_done * run.shard_size, len(texts), run.shard_size, batch_size):
        vectors, rows = [], []
        for batch in shard:
            chunk = [texts[i] for i in batch]
            start = time.perf_counter()
            vectors.append(run.engine.encode_texts(chunk).numpy())  # (len(chunk), embed_dim)
            run.engine_seconds += time.perf_counter() - start
            run.embedded += len(batch)
            rows.extend({"index": lines[i], "text": texts[i]} for i in batch)
            run.advance(len(batch))
        run.finish_shard(vectors, rows, [])


def _as_engine(engine_or_model: Engine | CLIP, precision: str) -> Engine:
    if isinstance(engine_or_model, Engine):
        return engine_or_model
    device = str(next(engine_or_model.parameters()).device)
    return Engine(engine_or_model, EngineConfig(precision=precision, device=device))  # type: ignore[arg-type]


def embed_collection(
    engine_or_model: Engine | CLIP,
    preprocess: Preprocess | None,
    source: str | Path | Collection,
    out: str | Path,
    *,
    kind: str = "image",
    shard_size: int = 100_000,
    batch_size: int | None = None,
    workers: int | None = None,
    dtype: str = "float32",
    precision: str = "fp32",
    overwrite: bool = False,
    model_ref: str | None = None,
    progress: ProgressFn | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> EmbedSummary:
    """Embed every item of ``source`` (see ``open_images`` / ``open_texts``; ``kind`` says which)
    into shards under ``out``; a re-run with the same arguments resumes where a killed one stopped.

    ``precision`` applies when a model (not an Engine) is given. ``on_shard(k)`` is called after
    shard k is safely on disk. Unreadable images are skipped and listed, never fatal.
    """
    started = time.perf_counter()
    kind = source.kind if isinstance(source, Collection) else kind
    _check_arguments(shard_size, batch_size, dtype, kind, preprocess)
    engine = _as_engine(engine_or_model, precision)
    collection = source if isinstance(source, Collection) else (open_images if kind == "image" else open_texts)(source)
    out = Path(out)
    manifest = _open_out(out, collection, engine, shard_size, dtype, overwrite, model_ref)
    done_items = min(len(manifest["shards"]) * shard_size, len(collection))
    skipped = _read_skipped(out, done_items)
    run = _Run(out, collection, engine, manifest, shard_size, dtype, skipped, progress, on_shard, start=done_items)
    reused = run.shards_done
    run.advance(0)  # show the reused shards as done
    if collection.kind == "image":
        workers = default_workers() if workers is None else workers
        _run_images(run, preprocess, batch_size or engine.config.image_batch_size, workers)  # type: ignore[arg-type]
    else:
        _run_texts(run, batch_size or engine.config.text_batch_size)
    return _summary(run, reused, time.perf_counter() - started)


def _check_arguments(shard_size: int, batch_size: int | None, dtype: str, kind: str, preprocess: object) -> None:
    if shard_size < 1 or (batch_size is not None and batch_size < 1):
        raise ClipforgeError("--shard-size and --batch-size must be positive")
    if dtype not in ("float32", "float16"):
        raise ClipforgeError(f"unknown --dtype {dtype!r}; use float32 or float16")
    if kind == "image" and preprocess is None:
        raise ClipforgeError("embedding images needs the model's preprocess (clipforge.load returns it)")


def _open_out(out: Path, collection: Collection, engine: Engine, shard_size: int, dtype: str, overwrite: bool,
              model_ref: str | None) -> dict:  # fmt: skip
    """Check OUT against this run, keep its finished shards, and write the manifest -> manifest."""
    settings = _settings(collection, engine, engine.fingerprint, shard_size, dtype)
    done = _prepare_out(out, settings, overwrite)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_ref, "source": collection.spec,
                **settings, "shards_total": -(-len(collection) // shard_size), "shards": done,
                "complete": len(done) * shard_size >= len(collection)}  # fmt: skip
    _write_json(out / "manifest.json", manifest)  # before any shard: a mismatch is caught even after an early kill
    return manifest


def _summary(run: _Run, reused: int, wall: float) -> EmbedSummary:
    shards = run.manifest["shards"]
    return EmbedSummary(
        out=run.out, kind=run.collection.kind, items=len(run.collection),
        rows=sum(s["rows"] for s in shards), skipped=sum(s["skipped"] for s in shards) + len(run.collection.skipped),
        shards=len(shards), shards_reused=reused, processed=run.processed, embedded=run.embedded,
        engine_seconds=run.engine_seconds, wall_seconds=wall, precision=run.engine.precision,
        embed_dim=run.engine.embed_dim, skipped_items=run.collection.skipped + run.skipped,
    )  # fmt: skip
