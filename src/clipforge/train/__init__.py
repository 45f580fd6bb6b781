"""Contrastive training: run config, loop, optimiser, checkpoints and resume."""

from .config import DataConfig, RunConfig, TrainConfig, load_run_config
from .loop import RunResult, TrainingInterrupted, train

__all__ = ["DataConfig", "RunConfig", "RunResult", "TrainConfig", "TrainingInterrupted", "load_run_config", "train"]
