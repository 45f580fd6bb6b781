"""`clipforge plot RUN_DIR`: PNG curves from metrics.jsonl, and a clear error without metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clipforge.errors import ClipforgeError
from clipforge.train import load_run_config, train
from clipforge.train.plot import plot_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_loss_scale_and_zeroshot_pngs(tmp_path: Path) -> None:
    train(load_run_config(None, {"data.train": "synthetic:64", "data.val": "synthetic:16", "train.batch_size": 16,
                                 "train.steps": 4, "train.log_every": 1, "train.eval_every": 2, "train.threads": 1,
                                 "out_dir": str(tmp_path)}))  # fmt: skip
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a torn last line, as after a kill mid-append: ignored
    written = plot_run(tmp_path)
    assert {p.name for p in written} == {"loss.png", "logit_scale.png", "zeroshot_top1.png"}
    assert all(p.parent == tmp_path and p.read_bytes()[:8] == PNG for p in written)


def test_plot_without_metrics_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClipforgeError, match="no metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ClipforgeError, match="holds no metrics"):
        plot_run(tmp_path)


@pytest.mark.slow
def test_plot_cli(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "clipforge", "plot", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no metrics.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 4.1, "logit_scale": 14.3}\n{"step": 2, "loss": 4.0, "logit_scale": 14.4}\n')
    proc = subprocess.run([sys.executable, "-m", "clipforge", "plot", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG and "wrote" in proc.stdout
