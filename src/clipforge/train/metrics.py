"""Training metrics as JSONL, a rich progress bar (main process, interactive only), and the
default periodic evaluation: zero-shot top-1 on held-out images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from ..models.clip import CLIP

__all__ = ["MetricsLog", "Progress", "read_jsonl", "zeroshot_eval_fn"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (the process was killed mid-append) is dropped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class MetricsLog:
    """Appends one JSON object per line. On resume, rows past the checkpoint's step (written
    after it, before the interruption) are dropped so the log matches the weights."""

    def __init__(self, path: Path, enabled: bool = True, resume_step: int = 0) -> None:
        self.path, self.enabled = path, enabled
        self.rows: list[dict[str, Any]] = []
        if enabled and path.is_file():
            self.rows = [r for r in read_jsonl(path) if r.get("step", 0) <= resume_step]
            from ..checkpoint.io import atomic_path

            with atomic_path(path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class Progress:
    """A rich progress bar with samples/s, loss, lr, logit scale and ETA; silent when disabled
    or when stderr is not a terminal (CI logs stay readable)."""

    def __init__(self, enabled: bool, total: int, done: int = 0) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total, self.done = total, done
        self._bar: Any = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
            )  # fmt: skip
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.done, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def set_total(self, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def update(self, row: dict[str, Any]) -> None:
        if self._bar is None:
            return
        info = (f"loss {row['loss']:.3f}  lr {row['lr']:.2e}  scale {row['logit_scale']:.1f}  "
                f"{row['samples_per_s']:.0f} samples/s")  # fmt: skip
        if "zeroshot_top1" in row:
            info += f"  zero-shot {row['zeroshot_top1']:.1%}"
        self._bar.update(self._task, completed=row["step"], info=info)


def _val_items(spec: str) -> list:
    from ..data import load_items
    from ..datasets import read_manifest

    manifest = read_manifest(spec) if Path(spec).is_dir() else None
    if manifest is not None:  # a built data set: its concept-level held-out split
        shards = manifest.shard_paths("heldout")
        if not shards:
            from ..errors import DataError

            raise DataError(f"{spec} has no held-out split; set data.val to a data set that has one, or to null")
        return load_items("::".join(shards))
    return load_items(spec)


def zeroshot_eval_fn(spec: str, preprocess: Callable, templates: str = "simple",
                     max_images: int = 2000) -> Callable[["CLIP", int], dict[str, float]]:  # fmt: skip
    """The default ``eval_fn(model, step)``: zero-shot top-1 over the class names of ``spec``
    (each sample's concept, else its first caption). Images are decoded once, here."""
    import torch

    from ..eval.templates import load_templates

    items = _val_items(spec)[:max_images]
    prompts = load_templates(templates)
    classes = [it.concept or it.captions[0] for it in items]
    classnames = sorted(set(classes))
    labels = torch.tensor([classnames.index(c) for c in classes])  # (n,)
    images = torch.stack([preprocess(it.open_image().convert("RGB")) for it in items])  # (n, 3, H, W)

    def evaluate(model: "CLIP", step: int) -> dict[str, float]:
        return {"zeroshot_top1": zeroshot_top1(model, images, labels, classnames, prompts)}

    return evaluate


def zeroshot_top1(model: "CLIP", images: "torch.Tensor", labels: "torch.Tensor", classnames: list[str],
                  templates: list[str], batch_size: int = 256) -> float:  # fmt: skip
    import torch
    import torch.nn.functional as F

    from ..eval.zeroshot import zero_shot_classifier

    device = next(model.parameters()).device
    with torch.no_grad():
        classifier = zero_shot_classifier(model, classnames, templates)  # (dim, classes)
        correct = 0
        for start in range(0, len(images), batch_size):
            feats = model.encode_image(images[start : start + batch_size].to(device)).float()  # (b, dim)
            logits = F.normalize(feats, dim=-1) @ classifier  # (b, classes)
            correct += int((logits.argmax(dim=1).cpu() == labels[start : start + batch_size]).sum())
    return correct / max(1, len(images))
