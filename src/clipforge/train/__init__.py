"""Contrastive training: run config, loop, optimiser, checkpoints and resume."""

from .config import DataConfig, RunConfig, TrainConfig, load_run_config
from .loop import RunResult, TrainingInterrupted, read_metrics, train
from .metrics import zeroshot_eval_fn
from .plot import plot_run

__all__ = ["DataConfig", "RunConfig", "RunResult", "TrainConfig", "TrainingInterrupted", "load_run_config",
           "plot_run", "read_metrics", "train", "zeroshot_eval_fn"]  # fmt: skip
