"""The ``clipforge`` command: a thin typer shell; each command calls one library function.

Errors raised on purpose (ClipforgeError) are printed as one sentence with a non-zero exit and
no traceback. Heavy modules are imported inside the commands so ``clipforge --help`` is fast.
"""

from __future__ import annotations

import sys
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
