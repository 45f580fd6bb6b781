"""The ``clipforge`` command: a thin typer shell; each command calls one library function.

Errors raised on purpose (ClipforgeError) are printed as one sentence with a non-zero exit and
no traceback. Heavy modules are imported inside the commands so ``clipforge --help`` is fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import ClipforgeError

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
    out: Path = typer.Option(..., "--out", "-o", help="Output .npy file (a .txt of row items is written beside it)."),
    images: Optional[Path] = typer.Option(None, "--images", help="An image file or a folder of images."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="A text file, one text per line."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = typer.Option(2, "--workers", help="Image decoding processes."),
) -> None:
    """Embed images or texts into L2-normalised vectors (.npy)."""
    from .inference.cli import run_embed

    run_embed(model, out, images=images, texts=texts, batch_size=batch_size, workers=workers)


# --- training ---
@app.command("train", context_settings={"allow_interspersed_args": True})
def train_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config JSON (see examples/tiny_run.json)."),
    overrides: list[str] = typer.Option([], "--set", help="Dotted override, e.g. --set train.lr=3e-4 (repeatable)."),
) -> None:
    """Train a CLIP (one process, or one per device under torchrun); resumes automatically."""
    from .train import load_run_config, train

    result = train(load_run_config(config, parse_overrides(overrides)))
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
) -> None:
    """Build a real data set, train a small CLIP on it, evaluate zero-shot, write a report."""
    from .demo import run_demo

    run_demo(out=out, minutes=minutes, data=data, device=device, limit=limit)


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
