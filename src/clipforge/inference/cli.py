"""What ``clipforge embed`` does, as one function the CLI calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ClipforgeError, DataError

__all__ = ["run_embed"]


def run_embed(
    model_name: str,
    out: Path,
    *,
    images: Path | None = None,
    texts: Path | None = None,
    batch_size: int = 64,
    workers: int = 2,
) -> Path:
    from rich.progress import Progress

    from ..checkpoint import load
    from ..checkpoint.io import atomic_path
    from .embed import embed_images, embed_texts, list_images

    if (images is None) == (texts is None):
        raise ClipforgeError("give exactly one of --images or --texts")
    model, preprocess = load(model_name)
    if texts is not None:
        if not texts.is_file():
            raise DataError(f"{texts} does not exist; give a text file with one text per line")
        lines = [line.strip() for line in texts.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{texts} has no non-empty lines")
        result = embed_texts(model, lines, batch_size=batch_size)
    else:
        paths = list_images(images)  # type: ignore[arg-type]
        with Progress(transient=True) as bar:
            task = bar.add_task("embedding images", total=len(paths))
            result = embed_images(
                model, preprocess, paths, batch_size=batch_size, workers=workers,
                progress=lambda n: bar.advance(task, n),
            )  # fmt: skip
    out = out if out.suffix == ".npy" else out.with_suffix(".npy")
    with atomic_path(out, suffix=".npy") as tmp:
        np.save(tmp, result.embeddings)
    with atomic_path(out.with_suffix(".txt")) as tmp:
        tmp.write_text("".join(item.replace("\n", " ") + "\n" for item in result.items), encoding="utf-8")
    print(f"wrote {out} {result.embeddings.shape} and {out.with_suffix('.txt')}")
    for item, why in result.skipped.items():
        print(f"skipped {item}: {why}")
    return out
