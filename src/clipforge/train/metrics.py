"""Training metrics as JSONL, and a rich progress bar (main process, interactive only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "Progress"]


class MetricsLog:
    """Appends one JSON object per line. On resume, rows past the checkpoint's step (written
    after it, before the interruption) are dropped so the log matches the weights."""

    def __init__(self, path: Path, enabled: bool = True, resume_step: int = 0) -> None:
        self.path, self.enabled = path, enabled
        self.rows: list[dict[str, Any]] = []
        if enabled and path.is_file():
            kept = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
            self.rows = [r for r in kept if r.get("step", 0) <= resume_step]
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
