"""Embedding on a Ray cluster with Ray Data: the plan of ``stream.py`` (the same output shards,
done markers and folder, so either path resumes the other's work) with decoding in parallel Ray
tasks and the model in a pool of actors.

    records (reader.py) -> ray.data.from_arrow: one row per item of the shards still to do
      -> map_batches(_decode_batch)           tasks: read, hash, decode, preprocess (image_batches.decode_item)
      -> map_batches(_Embedder, actor pool)   one model load per actor, batches through the engine
      -> this process: rows gathered per output shard, each written when whole (writer.py)

This process (the driver) writes every file, so OUT needs to be on its machine only; the tasks
read the images, so a source must be readable at the same path on every node (a shared file
system). An actor or node that dies costs only the shards not yet written: Ray Data restarts the
actor and retries its tasks, and a re-run skips every shard that has a done marker.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ClipforgeError
from ..models.clip import CLIP
from ..transforms import Preprocess
from .engine import Engine, EngineConfig, model_fingerprint, resolve_precision
from .image_batches import decode_item
from .reader import Collection, Record, open_images
from .stream import EmbedSummary, ProgressFn, ShardPlan, check_arguments, output_settings, plan_shards, summarize

__all__ = ["embed_with_ray", "connect_ray"]

# A block (Ray's unit of work between stages) holds at most this many items: enough to amortise
# a task's overhead, small enough that a few hundred blocks keep every node busy.
_BLOCK_ITEMS = 1024


def embed_with_ray(
    model: CLIP,
    preprocess: Preprocess,
    source: str | Path | Collection,
    out: str | Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = 32,
    shard_size: int = 100_000,
    dtype: str = "float32",
    precision: str = "fp32",
    device: str = "cpu",
    compile: bool = False,
    cpus_per_worker: float = 1.0,
    cpus_per_decode: float = 1.0,
    overwrite: bool = False,
    model_ref: str | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
    progress: ProgressFn | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> EmbedSummary:
    """Embed the images of ``source`` into shards under ``out``, as ``embed_collection`` does (same
    layout, rows, order and resume rule), on the Ray cluster at ``address`` (see ``connect_ray``;
    an already initialised Ray is used as it is).

    ``workers`` embedding actors (default: one per GPU with ``device="cuda"``, else half the
    cluster's CPUs), each holding ``cpus_per_worker`` CPUs (and one GPU on cuda); decode tasks hold
    ``cpus_per_decode`` each. ``shard_index`` / ``num_shards``: only the shards k with
    ``k % num_shards == shard_index``. Unreadable images are listed in skipped.jsonl, never fatal.
    """
    started = time.perf_counter()
    if not isinstance(model, CLIP):
        raise ClipforgeError("embed_with_ray needs the CLIP model itself (each Ray actor builds its own engine)")
    check_arguments(shard_size, batch_size, dtype, "image", preprocess, shard_index, num_shards, overwrite)
    collection = source if isinstance(source, Collection) else open_images(source)
    if collection.kind != "image":
        raise ClipforgeError("--ray embeds images; embed texts without --ray (they need no decoding)")
    precision = resolve_precision(precision, device)  # once, here: every actor runs the same
    settings = output_settings(collection, fingerprint=model_fingerprint(model, precision), precision=precision,
                               embed_dim=model.config.embed_dim, dtype=dtype, shard_size=shard_size)  # fmt: skip
    owned = connect_ray(address)  # first: a wrong address is caught before OUT is touched
    try:
        plan = plan_shards(collection, out, settings, dtype=dtype, overwrite=overwrite, model_ref=model_ref,
                           shard_index=shard_index, num_shards=num_shards)  # fmt: skip
        run = _Gather(plan, model.config.embed_dim, progress, on_shard)
        run.report()
        if plan.todo:
            options = _Options(batch_size, precision, device, compile, cpus_per_worker, cpus_per_decode)
            _run(run, model, preprocess, options, _workers(workers, options))
    finally:
        if owned:
            _ray().shutdown()
    return summarize(plan, precision=precision, embed_dim=model.config.embed_dim, processed=run.processed,
                     embedded=run.embedded, engine_seconds=run.engine_seconds,
                     wall=time.perf_counter() - started, written=run.written)  # fmt: skip


def connect_ray(address: str | None = None) -> bool:
    """Join the Ray cluster at ``address`` -> whether this call connected (and should disconnect).

    ``address``: HOST:PORT of the head, ``ray://...`` (Ray Client), ``auto`` (``RAY_ADDRESS``, else
    the cluster ``ray start`` began on this machine), ``local`` (a new one here), or None (as
    ``ray.init()``: ``RAY_ADDRESS``, else the cluster ``ray start`` began here, else a new local
    one). An address nobody answers at is one clear error, not a minute of Ray's retries."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address in (None, "", "auto"):  # Ray's own rule: RAY_ADDRESS first
        address = os.environ.get("RAY_ADDRESS") or address or None
    if address not in (None, "auto", "local") and "://" not in address:
        _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ClipforgeError(f"cannot join the Ray cluster at {address or 'a new local instance'}: {first}") from None
    return True


def _check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClipforgeError(f"--ray {address!r} is not HOST:PORT (the head's address, as `ray status` prints it)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise ClipforgeError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with `ray start "
                             "--head`, or give its head's HOST:PORT to --ray or RAY_ADDRESS") from None  # fmt: skip


def _ray():  # noqa: ANN202  (ray is optional and imported lazily)
    try:
        import ray
        import ray.data  # noqa: F401  (checks the data extra too)
    except ImportError:
        raise ClipforgeError('--ray needs Ray Data: pip install "clipforge[ray]" (or "ray[data]")') from None
    return ray


class _Options:
    """What the Ray stages need besides the model (plain values: they travel to every node)."""

    def __init__(self, batch_size: int, precision: str, device: str, compile: bool, cpus_per_worker: float,
                 cpus_per_decode: float) -> None:  # fmt: skip
        self.batch_size, self.precision, self.device, self.compile = batch_size, precision, device, compile
        self.cpus_per_worker, self.cpus_per_decode = cpus_per_worker, cpus_per_decode
        self.gpus = 1 if torch.device(device).type == "cuda" else 0


# ---- the driver: gather rows per shard, write each when whole ------------------------------
class _Gather:
    """Rows arrive from the actors in any order; a shard is written once all its items are in.
    A row seen before (a batch Ray ran twice, after a worker died) is dropped, not written twice."""

    def __init__(self, plan: ShardPlan, dim: int, progress: ProgressFn | None,
                 on_shard: Callable[[int], None] | None) -> None:  # fmt: skip
        self.plan, self.dim, self.progress, self.on_shard = plan, dim, progress, on_shard
        self.parts: dict[int, list[dict[str, np.ndarray]]] = {}  # shard -> its rows so far
        self.seen: dict[int, set[int]] = {}  # shard -> the items in parts
        self.done: set[int] = set()
        self.processed = self.embedded = self.written = 0
        self.engine_seconds = 0.0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for shard in np.unique(batch["shard"]).tolist():
            if shard in self.done:
                continue
            seen = self.seen.setdefault(shard, set())
            rows = (batch["shard"] == shard) & ~np.isin(batch["index"], np.fromiter(seen, np.int64, len(seen)))
            if not rows.any():
                continue
            part = {name: column[rows] for name, column in batch.items()}
            self.parts.setdefault(shard, []).append(part)
            seen.update(part["index"].tolist())
            self.processed += len(part["index"])
            self.embedded += int(part["ok"].sum())
            self.engine_seconds += float(part["engine_seconds"].sum())
            if len(seen) == len(self.plan.items(shard)):
                self._write(shard)
        self.report()

    def report(self) -> None:
        if self.progress:
            self.progress(self.plan.items_reused() + self.processed, self.plan.items_total())

    def check_done(self) -> None:
        missing = [k for k in self.plan.todo if k not in self.done]
        if missing:
            raise ClipforgeError(f"the Ray job ended with {len(missing)} shard(s) incomplete (first: {missing[0]}); "
                                 "run the same command again to redo them")  # fmt: skip

    def _write(self, shard: int) -> None:
        parts = self.parts.pop(shard)
        self.seen.pop(shard)
        self.done.add(shard)  # whole: whatever comes for it later is a repeat
        columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        order = np.argsort(columns["index"], kind="stable")  # source order, as embed_collection writes
        columns = {name: column[order] for name, column in columns.items()}
        ok = columns["ok"].astype(bool)
        records = self.plan.collection.records
        rows = [{"index": i, "path": records[i].path, "key": records[i].key,
                 "caption": caption if has else None, "width": int(w), "height": int(h), "sha256": sha}
                for i, caption, has, w, h, sha in zip(columns["index"][ok].tolist(), columns["caption"][ok],
                                                     columns["has_caption"][ok], columns["width"][ok],
                                                     columns["height"][ok], columns["sha256"][ok])]  # fmt: skip
        skipped = [{"index": i, "path": records[i].ref, "reason": str(why)}
                   for i, why in zip(columns["index"][~ok].tolist(), columns["reason"][~ok])]  # fmt: skip
        # (rows, embed_dim); np.stack: Ray may hand a tensor column over as an array of rows
        vectors = np.stack(columns["vector"][ok]).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)
        self.plan.writer.write_shard(shard, vectors, rows, skipped)
        self.written += 1
        if self.on_shard:
            self.on_shard(shard)


def _run(run: _Gather, model: CLIP, preprocess: Preprocess, options: _Options, workers: int) -> None:
    ray = _ray()
    ray.data.DataContext.get_current().enable_progress_bars = False  # before the dataset: it copies the context
    if run.progress:  # the caller shows progress: Ray Data's warnings only
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    pixels = tuple(preprocess(_blank()).shape)  # (3, H, W): every row has it, so blocks stack
    block_items = max(options.batch_size, min(run.plan.shard_size, _BLOCK_ITEMS))
    tables = _record_tables(run.plan, block_items)
    workers = min(workers, len(tables))  # an actor without a block to embed would only load the model
    dataset = ray.data.from_arrow(tables)
    # A decode task reserves the memory of its batch (float32 pixels, twice: the images and the
    # stacked batch, plus 600 MiB: a Ray worker with torch loaded, measured ~450-570 MiB), so Ray
    # schedules no more decoders than a node holds.
    # That also keeps decoding a stage of its own (Ray fuses stages with equal resource requests
    # into the actors), so decoding scales with the cluster's CPUs, not with the model copies.
    memory = 2 * 4 * options.batch_size * int(np.prod(pixels)) + (600 << 20)
    dataset = dataset.map_batches(_decode_batch, fn_kwargs={"preprocess": preprocess, "pixels": pixels},
                                  batch_size=options.batch_size, num_cpus=options.cpus_per_decode,
                                  memory=memory)  # fmt: skip
    dataset = dataset.map_batches(
        _Embedder, fn_constructor_kwargs={"model": model, "options": options}, batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=options.cpus_per_worker, num_gpus=options.gpus,
    )  # fmt: skip
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            run.add(batch)
    except ClipforgeError:
        raise
    except Exception as e:  # noqa: BLE001  Ray raises many types when a job fails; one sentence here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ClipforgeError(f"the Ray job stopped after {run.written} new shard(s) ({first}); finished shards "
                             "are kept: run the same command again to resume") from None  # fmt: skip
    run.check_done()


def _workers(workers: int | None, options: _Options) -> int:
    """The actor pool's size: as asked, if the cluster can hold it and one decode task beside it
    (else Ray would wait forever), or one per GPU, or half the CPUs (the other half decodes)."""
    resources = _ray().cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if workers is None:
        workers = int(gpus) if options.gpus else int(cpus / 2 / options.cpus_per_worker)
        workers = max(1, workers)
    if workers < 1:
        raise ClipforgeError("--workers must be positive")
    if workers * options.cpus_per_worker + options.cpus_per_decode > cpus or workers * options.gpus > gpus:
        need = f"{workers} actor(s) of {options.cpus_per_worker:g} CPU" + (" and 1 GPU" if options.gpus else "")
        raise ClipforgeError(f"the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s): too few for {need} plus a "
                             f"decode task of {options.cpus_per_decode:g} CPU; give fewer --workers or add nodes")  # fmt: skip
    return workers


def _blank():  # noqa: ANN202
    from PIL import Image

    return Image.new("RGB", (64, 64))


def _record_tables(plan: ShardPlan, block_items: int) -> list:
    """The records of the shards to do as Arrow tables, one per block (none straddles a shard)."""
    import pyarrow as pa

    records, tables = plan.collection.records, []
    for shard in plan.todo:
        items = plan.items(shard)
        for first in range(items.start, items.stop, block_items):
            block = range(first, min(first + block_items, items.stop))
            rs = [records[i] for i in block]
            tables.append(pa.table({
                "index": pa.array(block, pa.int64()), "shard": pa.array([shard] * len(rs), pa.int64()),
                "path": pa.array([r.path for r in rs], pa.string()), "key": pa.array([r.key for r in rs], pa.string()),
                "offset": pa.array([r.offset for r in rs], pa.int64()),
                "size": pa.array([r.size for r in rs], pa.int64()),
                "captions": pa.array([list(r.captions) for r in rs], pa.list_(pa.string())),
                "data": pa.array([r.data for r in rs], pa.binary()),
            }))  # fmt: skip
    return tables


# ---- the stages (run on the cluster) ------------------------------------------------------
def _decode_batch(batch: dict[str, np.ndarray], preprocess: Preprocess, pixels: tuple[int, ...]) -> dict:
    """Records -> pixels (a zero image for a skipped item, so every batch stacks) and metadata."""
    n = len(batch["index"])
    out = {"index": batch["index"], "shard": batch["shard"], "ok": np.zeros(n, bool),
           "reason": np.full(n, "", object), "width": np.zeros(n, np.int32), "height": np.zeros(n, np.int32),
           "sha256": np.full(n, "", object), "caption": np.full(n, "", object), "has_caption": np.zeros(n, bool),
           "pixels": np.zeros((n, *pixels), np.float32)}  # fmt: skip
    for row in range(n):
        record = Record(str(batch["path"][row]), batch["key"][row], int(batch["offset"][row]), int(batch["size"][row]),
                        tuple(batch["captions"][row]), batch["data"][row])  # fmt: skip
        decoded, x = decode_item(record, int(batch["index"][row]), preprocess)
        if decoded is None or tuple(x.shape) != pixels:  # type: ignore[union-attr]
            why = x if decoded is None else f"preprocessed to {tuple(x.shape)}, not {pixels}"  # type: ignore[union-attr]
            out["reason"][row] = why
            continue
        out["ok"][row], out["width"][row], out["height"][row] = True, decoded.width, decoded.height
        out["sha256"][row], out["pixels"][row] = decoded.sha256, x.numpy()  # type: ignore[union-attr]
        if decoded.captions:
            out["caption"][row], out["has_caption"][row] = decoded.captions[0], True
    return out


class _Embedder:
    """One per actor: builds the engine once, then embeds batch after batch."""

    def __init__(self, model: CLIP, options: _Options) -> None:
        from .allocator import keep_freed_memory

        keep_freed_memory()  # this process only embeds: reuse freed activation memory
        config = EngineConfig(precision=options.precision, device=options.device, compile=options.compile,  # type: ignore[arg-type]
                              image_batch_size=options.batch_size)  # fmt: skip
        self.engine = Engine(model, config, copy_model=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["ok"].astype(bool)
        out = {name: column for name, column in batch.items() if name != "pixels"}  # pixels stay here
        vectors = np.zeros((len(ok), self.engine.embed_dim), np.float32)  # (n, embed_dim); skipped rows stay zero
        start = time.perf_counter()
        if ok.any():
            vectors[ok] = self.engine.encode_images(torch.from_numpy(batch["pixels"][ok])).numpy()
        out["vector"] = vectors
        out["engine_seconds"] = np.full(len(ok), (time.perf_counter() - start) / len(ok))
        return out
