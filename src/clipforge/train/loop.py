"""The training run: the same function trains a tiny model on one CPU and a large one under
``torchrun`` (one process per device, DDP), with exact resume."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import checkpoint
from ..config import apply_overrides
from ..data import load_items, make_loader
from ..data.loader import batches_per_epoch
from ..distributed import DistInfo, all_reduce_mean, cleanup, init_distributed
from ..errors import ClipforgeError, DataError, TrainingError
from ..factory import create_model
from ..losses import make_loss
from ..models.clip import CLIP
from ..registry import get_model_config
from ..tokenizer import tokenize
from ..transforms import image_transform
from .config import RunConfig
from .metrics import MetricsLog, Progress
from .optim import lr_at, make_optimizer
from .state import TrainState, latest_state, restore, save_state
from .step import SkipGuard, train_step

__all__ = ["train", "RunResult", "TrainingInterrupted", "build_model"]

EvalFn = Callable[[CLIP], dict[str, float]]
_SPEED_PROBE_STEPS = 5  # steps timed before a wall-clock budget fixes the step count


class TrainingInterrupted(ClipforgeError):
    """Ctrl-C: a checkpoint was saved; running the same command again resumes."""


@dataclass
class RunResult:
    run_dir: Path
    final_weights: Path | None
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)


def build_model(config: RunConfig) -> CLIP:
    t = config.train
    if t.init_from:
        model, _ = checkpoint.load(t.init_from)
    else:
        arch = apply_overrides(get_model_config(config.model), config.model_overrides)
        model = create_model(arch, seed=t.seed)
    model.train()
    if t.lock_image:
        model.visual.requires_grad_(False)
        model.visual.eval()  # frozen BatchNorm statistics too (LiT)
    if t.lock_text:
        for p in model.text_tower_parameters():
            p.requires_grad_(False)
    model.set_grad_checkpointing(t.grad_checkpointing)
    return model


def _prepare_run_dir(config: RunConfig, dist: DistInfo) -> Path:
    run_dir = Path(config.out_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(config.to_json())
    return run_dir


def _resume(config: RunConfig, run_dir: Path, model, optimizer, scaler) -> TrainState:
    mode = config.train.resume
    if mode == "never":
        return TrainState()
    if mode == "auto":
        found = latest_state(run_dir)
    else:
        path = Path(mode)
        if not path.is_file():
            raise TrainingError(f"resume checkpoint {path} does not exist")
        found = (path, torch.load(path, map_location="cpu", weights_only=True))
    if found is None:
        return TrainState()
    return restore(found[1], model, optimizer, scaler)


def train(config: RunConfig, eval_fn: EvalFn | None = None) -> RunResult:
    """Train as ``config`` says; resumes from the newest checkpoint in ``out_dir``."""
    dist = init_distributed(config.train.device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        return _train(config, dist, eval_fn)
    finally:
        cleanup()


def _train(config: RunConfig, dist: DistInfo, eval_fn: EvalFn | None) -> RunResult:
    t = config.train
    run_dir = _prepare_run_dir(config, dist)
    items = load_items(config.data.train, config.data.image_key, config.data.caption_key)
    n_batches = batches_per_epoch(len(items), t.batch_size, dist.world_size)
    if n_batches == 0:
        raise DataError(f"the batch size {t.batch_size} × {dist.world_size} processes is larger than the data set ({len(items)} samples)")
    model = build_model(config).to(dist.device)
    optimizer = make_optimizer(model, t.lr, t.weight_decay, t.betas, t.eps)
    scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None
    state = _resume(config, run_dir, model, optimizer, scaler)
    state.total_steps = state.total_steps or t.steps
    train_model: torch.nn.Module = model
    if dist.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if dist.device == "cpu" else [dist.local_rank])
    loss_fn = make_loss(t.loss, dist.rank, dist.world_size, t.local_loss)
    preprocess = image_transform(model.image_size, train=config.data.augment)
    tok = lambda texts: tokenize(texts, context_length=model.context_length, truncate=True)  # noqa: E731
    guard = SkipGuard(t.max_consecutive_skips)
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=dist.is_main, resume_step=state.step)
    progress = Progress(enabled=dist.is_main, total=state.total_steps, done=state.step)
    started, probe_start = time.perf_counter(), None
    try:
        with progress:
            while state.step < state.total_steps:
                loader = make_loader(items, preprocess, tok, t.batch_size, seed=t.seed, epoch=state.epoch,
                                     rank=dist.rank, world_size=dist.world_size, workers=config.data.workers,
                                     start_batch=state.batch, spread_concepts=config.data.spread_concepts)  # fmt: skip
                for batch in loader:
                    lr = lr_at(state.step, t.lr, t.warmup_steps, state.total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    tick = time.perf_counter()
                    result = train_step(train_model, loss_fn, batch.images.to(dist.device), batch.tokens.to(dist.device),
                                        optimizer, micro_batch=t.micro_batch, precision=t.precision, scaler=scaler,
                                        max_grad_norm=t.max_grad_norm)  # fmt: skip
                    state.step += 1
                    state.batch += 1
                    state.skipped_samples += len(batch.skipped)
                    state.skipped_steps += int(result.skipped)
                    guard.update(result, state.step)
                    samples_per_s = t.batch_size * dist.world_size / max(1e-9, time.perf_counter() - tick)
                    if t.max_minutes and state.step == _SPEED_PROBE_STEPS:
                        probe_start = time.perf_counter()
                    if t.max_minutes and state.step == 2 * _SPEED_PROBE_STEPS and probe_start:
                        state.total_steps = _steps_for_budget(t.max_minutes, started, probe_start, state.step, t.steps)
                        progress.set_total(state.total_steps)
                    row = {"step": state.step, "epoch": state.epoch, "loss": result.loss, "lr": lr,
                           "logit_scale": float(model.scale().detach()), "samples_per_s": samples_per_s,
                           "skipped_steps": state.skipped_steps, "skipped_samples": state.skipped_samples}  # fmt: skip
                    if t.eval_every and eval_fn and state.step % t.eval_every == 0 and dist.is_main:
                        row.update(_evaluate(model, eval_fn))
                    if state.step % t.log_every == 0 or "zeroshot_top1" in row or state.step == state.total_steps:
                        row["loss"] = float(all_reduce_mean(torch.tensor(result.loss)))
                        log.write(row)
                    progress.update(row)
                    if state.step % t.checkpoint_every == 0 and dist.is_main:
                        save_state(run_dir, model, optimizer, scaler, state, t.keep_last)
                    if state.step >= state.total_steps:
                        break
                else:
                    state.epoch, state.batch = state.epoch + 1, 0
    except KeyboardInterrupt:
        if dist.is_main:
            save_state(run_dir, model, optimizer, scaler, state, t.keep_last)
        raise TrainingInterrupted(
            f"interrupted at step {state.step}; a checkpoint was saved in {run_dir}/checkpoints, "
            "run the same command again to resume"
        ) from None
    final = None
    if dist.is_main:
        save_state(run_dir, model, optimizer, scaler, state, t.keep_last)
        final = checkpoint.save(model, run_dir / "final.safetensors")
        if eval_fn is not None and t.eval_every:
            log.write({"step": state.step, **_evaluate(model, eval_fn)})
    return RunResult(run_dir, final, state, log.rows)


def _steps_for_budget(minutes: float, started: float, probe_start: float, done: int, cap: int) -> int:
    per_step = (time.perf_counter() - probe_start) / _SPEED_PROBE_STEPS
    remaining = minutes * 60 - (time.perf_counter() - started)
    return max(done + 1, min(cap, done + int(remaining / per_step)))


def _evaluate(model: CLIP, eval_fn: EvalFn) -> dict[str, float]:
    frozen_bn = not any(p.requires_grad for p in model.visual.parameters())
    model.eval()
    try:
        with torch.no_grad():
            return eval_fn(model)
    finally:
        model.train()
        if frozen_bn:  # a locked image tower keeps its BatchNorm statistics
            model.visual.eval()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ClipforgeError(f"{run_dir} has no metrics.jsonl; is it a clipforge run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
