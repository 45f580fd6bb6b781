"""The ``clipforge`` command: a thin typer shell; each command calls one library function.

Errors raised on purpose (ClipforgeError) are printed as one sentence with a non-zero exit and
no traceback. Heavy modules are imported inside the commands so ``clipforge --help`` is fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import ClipforgeError, ConfigError, DataError

__all__ = ["app", "main"]

app = typer.Typer(
    name="clipforge",
    help="Train, convert, evaluate and serve CLIP models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("list-models")
def list_models_cmd() -> None:
    """List the model architectures clipforge can build."""
    from .registry import list_models

    for name in list_models():
        typer.echo(name)


# --- checkpoints ---
@app.command("convert")
def convert_cmd(
    src: str = typer.Argument(..., help="Checkpoint: clipforge .safetensors, OpenAI .pt, open_clip .pt, HF directory, or a model name."),
    dst: Path = typer.Argument(..., help="Output file (clipforge, open_clip) or directory (hf)."),
    to: str = typer.Option("clipforge", "--to", help="Target format: clipforge, open_clip or hf."),
    quick_gelu: Optional[bool] = typer.Option(None, "--quick-gelu/--gelu", help="Activation for plain state dicts (default: QuickGELU, OpenAI's)."),
) -> None:
    """Convert a checkpoint between clipforge, open_clip and Hugging Face formats."""
    from .checkpoint import convert

    out = convert(src, dst, to=to, quick_gelu=quick_gelu)  # type: ignore[arg-type]
    typer.echo(f"wrote {out}")


# --- embedding ---
@app.command("embed")
def embed_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Model name or checkpoint path."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder of shards (resumable), or a .npy file (one file plus a .txt of row items)."),
    images: Optional[str] = typer.Option(None, "--images", help="An image, a folder (recursive), a text file of image paths, or WebDataset shards (data/{000..009}.tar or a folder of .tar)."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="A text file, one text per line."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Items per model call (default: the engine's, 32 images / 256 texts)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Image decoding processes (default: min(4, CPUs)); with --ray, embedding actors (default: one per GPU on cuda, else half the cluster's CPUs)."),
    shard_size: int = typer.Option(100_000, "--shard-size", help="Items per output shard."),
    dtype: str = typer.Option("float32", "--dtype", help="Stored embeddings: float32 or float16."),
    precision: str = typer.Option("auto", "--precision", help="Engine precision: auto (bf16 where the hardware computes it natively: features within bf16 rounding, cosine >= 0.999), fp32 (exact), bf16, fp16 (GPU)."),
    device: str = typer.Option("cpu", "--device", help="cpu, or cuda when a GPU is present."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace embeddings already in --out instead of resuming."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the towers: ~20-60 s once, then the fastest path on big collections."),
    shard_index: int = typer.Option(0, "--shard-index", help="This worker's number, 0..N-1: it writes only the output shards k with k % N == I (Slurm arrays, Spark tasks)."),
    num_shards: int = typer.Option(1, "--num-shards", help="N, the number of workers sharing --out (see --shard-index)."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Run on a Ray cluster (pip install 'clipforge[ray]'): HOST:PORT of its head, auto (RAY_ADDRESS, else the cluster `ray start` began here) or local (a new one here)."),
) -> None:
    """Embed images or texts into L2-normalised vectors: shards of .npy + parquet metadata, resumable."""
    from .inference.embed_job import run_embed

    try:
        run_embed(model, out, images=images, texts=texts, batch_size=batch_size, workers=workers,
                  shard_size=shard_size, dtype=dtype, precision=precision, device=device, overwrite=overwrite,
                  compile=compile_, shard_index=shard_index, num_shards=num_shards, ray=ray)  # fmt: skip
    except KeyboardInterrupt:
        typer.echo("interrupted: finished shards are kept; run the same command again to resume", err=True)
        raise typer.Exit(130) from None  # the shell's code for "stopped by Ctrl-C"


# --- training ---
@app.command("train", context_settings={"allow_interspersed_args": True})
def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config JSON (see examples/tiny_run.json)."),
    overrides: list[str] = typer.Option([], "--set", help="Dotted override, e.g. --set train.lr=3e-4 (repeatable)."),
) -> None:
    """Train a CLIP (one process, or one per device under torchrun); resumes automatically."""
    from .train import TrainingInterrupted, load_run_config, train

    try:
        result = train(load_run_config(config, parse_overrides(overrides)))
    except TrainingInterrupted as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(130) from None  # the shell's code for "stopped by Ctrl-C"
    if result.final_weights is not None:
        typer.echo(f"trained {result.state.step} steps; weights: {result.final_weights}")


@app.command("plot")
def plot_cmd(run_dir: Path = typer.Argument(..., help="A training run directory.")) -> None:
    """Write loss / logit-scale / zero-shot curves of a run as PNG."""
    from .train.plot import plot_run

    for path in plot_run(run_dir):
        typer.echo(f"wrote {path}")


def parse_overrides(pairs: list[str]) -> dict:
    from .train.config import parse_overrides as parse

    return parse(pairs)


# --- demo ---
@app.command("demo")
def demo_cmd(
    minutes: float = typer.Option(10.0, "--minutes", help="Training budget (wall clock)."),
    out: Path = typer.Option(Path("demo_out"), "--out", help="Where the run and the report go."),
    data: str = typer.Option("openmoji", "--data", help="Data set builder: openmoji or tuxpaint."),
    device: str = typer.Option("cpu", "--device", help="cpu, or cuda when a GPU is present."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use about this many images (a quick look)."),
    recipe: str = typer.Option("robust", "--recipe", help="robust (the default: OpenMoji with light style augmentation), mix (the same plus Tux Paint and Openclipart clip-art; measured lower, see README) or openmoji (the wave-1 recipe)."),
) -> None:  # fmt: skip
    """Build a real data set, train a small CLIP on it, evaluate zero-shot and under style
    shift, write a report."""
    from .demo import run_demo
    from .demo.recipe import RECIPES

    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    run_demo(out=out, minutes=minutes, data=data, device=device, limit=limit, recipe=recipe)


# --- evaluation ---
eval_app = typer.Typer(help="Evaluate a model: zero-shot, retrieval, linear probe, style shift; bias, counting and binding probes.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _eval(task: str, model: str, data: str, out: Path, templates: str, split: str, baselines: list[Path] = ()) -> None:
    from .eval.run import run_eval

    result = run_eval(task, model, data, out, templates=templates, split=split, baselines=baselines)
    for key, value in result["metrics"].items():
        if key == "styles":
            for row in value:
                typer.echo(f"{row['style']:32s} top-1 {row['acc1']:.1%}  drop {row['drop_acc1']:+.1%}")
        elif isinstance(value, float):
            typer.echo(f"{key:32s} {value:.4f}")
    typer.echo(f"wrote {out}/")


_MODEL = typer.Option(..., "--model", "-m", help="Model name or checkpoint.")
_DATA = typer.Option(..., "--data", "-d", help="Class folders, a built data set dir, CSV/JSONL, or cifar10:ROOT.")
_OUT = typer.Option(Path("eval_out"), "--out", help="Output directory (JSON, markdown, plots).")
_TEMPLATES = typer.Option("simple", "--templates", help="imagenet, simple, cifar, emoji, clipart or a file.")
_SPLIT = typer.Option("heldout", "--split", help="Split of a built data set.")


@eval_app.command("zeroshot")
def eval_zeroshot(model: str = _MODEL, data: str = _DATA, out: Path = _OUT, templates: str = _TEMPLATES, split: str = _SPLIT) -> None:
    """Zero-shot classification: top-1, top-5, mean per-class recall, confusion matrix."""
    _eval("zeroshot", model, data, out, templates, split)


@eval_app.command("retrieval")
def eval_retrieval(model: str = _MODEL, data: str = _DATA, out: Path = _OUT, split: str = _SPLIT) -> None:
    """Text->image and image->text recall@1/5/10."""
    _eval("retrieval", model, data, out, "simple", split)


@eval_app.command("linear-probe")
def eval_linear_probe(model: str = _MODEL, data: str = _DATA, out: Path = _OUT, split: str = _SPLIT) -> None:
    """Logistic regression on frozen image features, C chosen on a validation split."""
    _eval("linear-probe", model, data, out, "simple", split)


@eval_app.command("shift")
def eval_shift(
    model: str = _MODEL, data: str = _DATA, out: Path = _OUT, templates: str = typer.Option("emoji", "--templates"),
    baseline: list[Path] = typer.Option([], "--baseline", help="Style-shift result(s) of reference models (style_shift_*.json): effective robustness is the height above their trend."),
) -> None:  # fmt: skip
    """Zero-shot accuracy of the same emoji concepts in other styles (fonts, grey-scale, blur),
    the drop from the training style, effective robustness, and a plot."""
    _eval("shift", model, data, out, templates, "train", baseline)


def _print_probe(result: dict, out: Path) -> None:
    for key, value in result["metrics"].items():
        if isinstance(value, float):
            typer.echo(f"{key:32s} {value:.4f}")
    typer.echo(f"wrote {out}/")


@eval_app.command("bias")
def eval_bias(
    model: str = _MODEL, out: Path = _OUT, templates: str = typer.Option("emoji", "--templates"),
    max_activities: Optional[int] = typer.Option(None, "--max-activities", help="Use only this many activities (a quick look)."),
) -> None:
    """OpenMoji people (person/man/woman x five skin tones): per-group accuracy, loaded-prompt rates, gaps."""
    from .eval.bias import run_bias

    _print_probe(run_bias(model, out, max_activities=max_activities, templates=templates), out)


@eval_app.command("counting")
def eval_counting(
    model: str = _MODEL, out: Path = _OUT,
    per_count: int = typer.Option(30, "--per-count", min=1, help="Pictures of each count (1-6 shapes)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Zero-shot 'a picture of N shapes' on generated pictures of 1-6 shapes, with chance beside it."""
    from .eval.counting import run_counting

    _print_probe(run_counting(model, out, per_count=per_count, seed=seed), out)


@eval_app.command("binding")
def eval_binding(
    model: str = _MODEL, out: Path = _OUT,
    trials: int = typer.Option(120, "--trials", min=1, help="Pictures of two coloured shapes."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Attribute binding: 'a red circle and a blue square' vs the colours swapped; colour and shape controls."""
    from .eval.binding import run_binding

    _print_probe(run_binding(model, out, trials=trials, seed=seed), out)


# --- guidance ---
@app.command("guide")
def guide_cmd(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: str = typer.Option(..., "--model", "-m", help="Guiding model: name or checkpoint."),
    out: Path = typer.Option(Path("guide.png"), "--out", "-o", help="Image to write; OUT_sheet.png, OUT_curve.png and OUT.json go beside it."),
    judge: Optional[str] = typer.Option(None, "--judge", help="An independently trained model that scores the result (it never guides)."),
    negative: list[str] = typer.Option([], "--negative", help="Prompt to steer away from (repeatable)."),
    steps: int = typer.Option(200, "--steps", min=1),
    size: Optional[int] = typer.Option(None, "--size", help="Image side in pixels (default: twice the model's input)."),
    param: str = typer.Option("pyramid", "--param", help="Image parametrisation: pyramid (multi-scale pixels) or fourier."),
    lr: float = typer.Option(0.05, "--lr"),
    cutouts: int = typer.Option(16, "--cutouts", min=1, help="Random crops scored per step (fewer: faster, noisier, more adversarial)."),
    seed: int = typer.Option(0, "--seed"),
    truncate: bool = typer.Option(False, "--truncate", help="Cut prompts longer than the context length instead of refusing them."),
) -> None:
    """Draw an image for PROMPT by optimising pixels against CLIP; judge it with a second model."""
    from .guidance.synth import run_guide

    s = run_guide(prompt, model, out, judge_spec=judge, negative_prompts=negative, steps=steps, size=size, param=param,
                  lr=lr, cutouts=cutouts, seed=seed, truncate=truncate)  # fmt: skip
    typer.echo(f"guide model  cosine {s['guide']['before']:+.4f} -> {s['guide']['after']:+.4f}")
    if "judge" in s:
        typer.echo(f"judge model  cosine {s['judge']['before']:+.4f} -> {s['judge']['after']:+.4f}"
                   + ("" if s["judge"]["rose"] else "  (did not rise: the image may fool only the guide)"))  # fmt: skip
    else:
        typer.echo("no --judge: the guide's own score proves little (an image optimised against a model can fool it)")
    typer.echo(f"wrote {out}, {s['files']['sheet']}, {s['files']['curve']}, {s['files']['json']}")


@app.command("rerank")
def rerank_cmd(
    images: str = typer.Argument(..., help="Candidates: a folder of images, one image, or a .npy of `clipforge embed` (its --out FILE.npy, or a shard OUT/img_emb/img_emb_00000.npy)."),
    prompt: str = typer.Argument(..., help="The text to rank them against."),
    model: str = typer.Option(..., "--model", "-m", help="Model name or checkpoint (for a .npy: the one that embedded it)."),
    out: Path = typer.Option(Path("rerank_out"), "--out", "-o", help="Folder for rerank.json and rerank.html."),
    top: int = typer.Option(10, "--top", min=1, help="Candidates printed here (the JSON holds all)."),
    truncate: bool = typer.Option(False, "--truncate", help="Cut a prompt longer than the context length instead of refusing it."),
) -> None:
    """Rank candidate images by CLIPScore against PROMPT (as DALL-E chose among samples); JSON + HTML sheet."""
    from .guidance.rerank import run_rerank

    s = run_rerank(images, prompt, model, out, truncate=truncate)
    for row in s["ranking"][:top]:
        typer.echo(f"{row['rank']:4d}  {row['clip_score']:.4f}  {row['item']}")
    typer.echo(f"ranked {s['ranked']} of {s['candidates']}; skipped {s['skipped']} unreadable; wrote {out}/rerank.json, {out}/rerank.html")


# --- search ---
data_app = typer.Typer(help="Build the real image-caption data sets (OpenMoji, Tux Paint, Openclipart).", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build(
    name: str = typer.Argument(..., help="openmoji, tuxpaint or openclipart."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the WebDataset shards and manifest.json."),
    image_size: int = typer.Option(64, "--image-size", help="Rendered image side in pixels."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Take this many images spread over the whole set."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Rendering processes (default: the usable cores)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when a build with these parameters exists."),
) -> None:
    """Render a data set into train / val / held-out WebDataset shards (cached: reused when current)."""
    from .datasets import build_dataset
    from .datasets.manifest import describe

    manifest = build_dataset(name, out, image_size=image_size, limit=limit, workers=workers, force=force)
    typer.echo(describe(manifest))


@data_app.command("shards")
def data_shards(
    src: str = typer.Argument(..., help="A CSV/TSV/JSONL table (image, caption columns) or an image folder with .txt captions."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the shards (img2dataset's layout, with sizes.json)."),
    shard_size: int = typer.Option(10_000, "--shard-size", help="Samples per shard."),
    image_key: str = typer.Option("image", "--image-key", help="The table's image column."),
    caption_key: str = typer.Option("caption", "--caption-key", help="The table's caption column."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace shards another request wrote in --out."),
) -> None:
    """Write WebDataset shards (png/jpg + txt + json) from a table or an image folder; resumable."""
    from .data.shard_writer import write_shards

    typer.echo(str(write_shards(src, out, shard_size, image_key=image_key, caption_key=caption_key, overwrite=overwrite)))


@data_app.command("info")
def data_info(root: Path = typer.Argument(..., help="A data set folder (with manifest.json).")) -> None:
    """Show what a built data set holds: images and concepts per split, shards, skipped files."""
    from .datasets.manifest import describe, read_manifest

    manifest = read_manifest(root)
    if manifest is None:
        raise DataError(f"{root} holds no data set (no manifest.json); build one with: clipforge data build NAME --out {root}")
    typer.echo(describe(manifest))


index_app = typer.Typer(help="Build and update a semantic image search index (FAISS + SQLite).", no_args_is_help=True)
app.add_typer(index_app, name="index")
_BATCH = typer.Option(64, "--batch-size", help="Images per model batch (and per committed transaction).")
_WORKERS = typer.Option(2, "--workers", help="Image decoding processes.")
_NEAR_DUP = typer.Option(None, "--near-duplicate", help="Skip images at least this similar (cosine, e.g. 0.97) to one already kept.")
_TAGS = typer.Option([], "--tag", help="User tag stored with every added image (repeatable).")


@index_app.command("build")
def index_build(
    source: Optional[Path] = typer.Argument(None, help="A folder of images (recursive; caption from IMAGE.txt beside each) or one image."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint file or published name (e.g. ViT-B/32); with --from-embeddings, the model that made them (default: the one their manifest names; none: vector queries only)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create."),
    kind: str = typer.Option("auto", "--kind", help="auto (exact below 50k images, IVF above, exhaustive 4-bit PQ fast scan + exact re-rank when IVF cannot keep recall; from embeddings: compressed IVF-PQ + exact re-rank from the shards above 50k), flat, ivf, pqfs or ivfpq."),
    from_embeddings: Optional[Path] = typer.Option(None, "--from-embeddings", help="Build from precomputed embeddings instead of images: the output folder of `clipforge embed` or of clip-retrieval's inference (img_emb/, text_emb/, metadata/)."),
    modality: str = typer.Option("auto", "--modality", help="With --from-embeddings: image, text (caption embeddings), both (a combined index) or auto (whatever the folder holds)."),
    memory_budget: str = typer.Option("2GiB", "--memory-budget", help="With --from-embeddings: RAM the compressed index may take (codes, ids, build buffers)."),
    backend: str = typer.Option("faiss", "--backend", help="Where the vectors live: faiss (FAISS + SQLite in OUT) or milvus (Milvus Lite in OUT, or the server of --milvus-uri; --kind: auto/flat exact, hnsw)."),
    milvus_uri: Optional[str] = typer.Option(None, "--milvus-uri", help="With --backend milvus: a Milvus Lite file (PATH.db; default OUT/milvus.db) or a server, http://host:19530 (token: $CLIPFORGE_MILVUS_TOKEN)."),
    milvus_collection: str = typer.Option("clipforge", "--milvus-collection", help="With --backend milvus: the collection to create."),
    batch_size: int = _BATCH, workers: int = _WORKERS, near_duplicate: Optional[float] = _NEAR_DUP, tag: list[str] = _TAGS,
) -> None:
    """Embed every image under SOURCE into a new index, or index the embeddings in --from-embeddings."""
    from .index.report import format_report  # no torch: building from embeddings needs no model

    if (source is None) == (from_embeddings is None):
        raise DataError("give either SOURCE (images to embed) or --from-embeddings EMB_DIR, not both or neither")
    if from_embeddings is not None:
        from .index.bulk import build_from_embeddings, parse_bytes

        if backend != "faiss":
            raise DataError("--from-embeddings builds FAISS indexes only; leave out --backend")
        report = build_from_embeddings(from_embeddings, out, model=model, modality=modality, kind=kind,
                                       memory_budget=parse_bytes(memory_budget), tags=tag)  # fmt: skip
    else:
        from .index.backend import build_index_with

        if model is None:
            raise DataError("building from images needs --model (a checkpoint file or a published name such as ViT-B/32)")
        report = build_index_with(backend, source, model, out, milvus_uri=milvus_uri, milvus_collection=milvus_collection,
                                  kind=kind, batch_size=batch_size, workers=workers, near_duplicate=near_duplicate,
                                  tags=tag, progress=_progress)  # fmt: skip
    typer.echo(format_report(report))


@index_app.command("add")
def index_add(
    index: Path = typer.Argument(..., help="Index folder."),
    source: Path = typer.Argument(..., help="A folder of images or one image."),
    batch_size: int = _BATCH, workers: int = _WORKERS, near_duplicate: Optional[float] = _NEAR_DUP, tag: list[str] = _TAGS,
) -> None:
    """Add images (exact duplicates skipped by SHA-256); an interrupted add resumes when re-run."""
    from .index.backend import add_images_to
    from .index.build import format_report

    report = add_images_to(index, source, batch_size=batch_size, workers=workers, near_duplicate=near_duplicate,
                        tags=tag, progress=_progress)  # fmt: skip
    typer.echo(format_report(report))


@index_app.command("delete")
def index_delete(
    index: Path = typer.Argument(..., help="Index folder."),
    ids: list[int] = typer.Argument(..., help="Item ids to delete."),
) -> None:
    """Delete items by id (files you indexed from your folders are left alone)."""
    from .index.backend import delete_items_from

    deleted = delete_items_from(index, ids)
    missing = sorted(set(ids) - set(deleted))
    typer.echo(f"deleted {len(deleted)} item(s)" + (f"; no such ids: {missing}" if missing else ""))


@index_app.command("info")
def index_info_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Items, model and index parameters."""
    import json

    from .index.backend import index_info_of

    info = index_info_of(index)
    typer.echo(json.dumps(info, indent=2) if as_json else "\n".join(f"{k:24s} {v}" for k, v in info.items()))


def _progress(done: int, total: int) -> None:
    typer.echo(f"\r{done}/{total} files", nl=False, err=True)
    if done >= total:
        typer.echo("", err=True)


@app.command("serve")
def serve_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: this machine only)."),
    port: int = typer.Option(8000, "--port"),
    token: Optional[str] = typer.Option(None, "--token", envvar="CLIPFORGE_API_TOKEN", help="API token required to add/delete."),
    concepts: Optional[Path] = typer.Option(None, "--concepts", help="Moderation concept file (default: the shipped one)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest request body accepted."),
    cors: list[str] = typer.Option([], "--cors", help="Origin allowed to query cross-site, e.g. a clip-retrieval front-end (repeatable)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: warning leaves out the access log."),
    threads: int = typer.Option(1, "--threads", help="torch/FAISS threads per request (parallelism comes from concurrent requests)."),
    batch_queries: bool = typer.Option(True, "--batch-queries/--no-batch-queries",
                                       help="Run concurrent queries together in micro-batches (text tower and index search)."),
    max_encode_items: int = typer.Option(256, "--max-encode-items", min=1, help="Texts + images one /encode request may hold."),
    precision: Optional[str] = typer.Option(None, "--precision",
                                            help="auto (default: bf16 where native), fp32 (exact fp32 vectors), bf16 or fp16."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes on the port: 1 writer + N-1 read-only replicas that follow its commits and forward adds/deletes to it (use the cores)."),
) -> None:
    """Serve the search page, JSON API, /encode and clip-retrieval's knn-service over INDEX."""
    from .serve.runner import serve

    serve(index, host=host, port=port, token=token, concepts=concepts, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
          cors_origins=tuple(cors), log_level=log_level, threads=threads, batch_queries=batch_queries,
          max_encode_items=max_encode_items, precision=precision, workers=workers)  # type: ignore[arg-type]  # fmt: skip


# --- ONNX export ---
@app.command("export-onnx")
def export_onnx_cmd(
    model: str = typer.Argument(..., help="Model name or checkpoint path."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for image_encoder.onnx, text_encoder.onnx and their JSON."),
    int8: bool = typer.Option(False, "--int8", help="Also write dynamic int8 versions to OUT/int8."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
) -> None:
    """Export both towers to ONNX (normalised features; dynamic batch and text length) for onnxruntime."""
    from .inference.onnx_export import export_model

    for path in export_model(model, out, int8=int8, opset=opset).values():
        typer.echo(f"wrote {path}")


@app.callback()
def _root() -> None:
    """Train, convert, evaluate and serve CLIP models."""


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: run the app, turning our own errors into one clear line and exit code 2."""
    try:
        app(args=argv)  # standalone mode: click reports usage errors and calls sys.exit
    except ClipforgeError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        return 2
    except FileNotFoundError as e:
        typer.secho(f"error: file not found: {e.filename}", fg=typer.colors.RED, err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
