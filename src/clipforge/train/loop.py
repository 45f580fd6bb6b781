"""The training run: the same function trains a tiny model on one CPU and a large one under
``torchrun`` (one process per device, DDP), with exact resume."""

from __future__ import annotations

import inspect
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import checkpoint
from ..checkpoint.io import atomic_path
from ..config import apply_overrides
from ..data import Batch
from ..data.stream import advance_position
from ..distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from ..errors import ClipforgeError, DataError, TrainingError
from ..factory import create_model, create_preprocess, create_tokenizer
from ..losses import make_loss
from ..models.clip import CLIP
from ..registry import get_model_config
from .config import RunConfig, check_run_config
from .data import TrainingData, open_training_data
from .metrics import MetricsLog, Progress, read_jsonl, zeroshot_eval_fn
from .optim import lr_at, make_optimizer
from .state import TrainState, checkpoint_paths, latest_state, remove_partial_writes, restore, save_state
from .step import SkipGuard, StepResult, train_step

__all__ = ["train", "RunResult", "TrainingInterrupted", "build_model", "read_metrics", "EvalFn"]

# ``eval_fn(model, step) -> {"metric": value}``; called on the main process, model in eval mode
# under no_grad. A one-argument ``eval_fn(model)`` is accepted too.
EvalFn = Callable[..., dict[str, float]]
_SPEED_PROBE_STEPS = 5  # steps timed before a wall-clock budget fixes the step count
_REESTIMATE_EVERY = 25  # steps between re-estimates of the count a wall-clock budget allows
# Changing these between a checkpoint and its resume would silently change the run.
_RESUME_KEYS = (("model",), ("model_overrides",), ("data", "train"), ("data", "train_weights"), ("data", "stream"),
                ("data", "resampled"), ("data", "epoch_samples"), ("data", "shuffle_buffer"), ("train", "batch_size"),
                ("train", "seed"), ("train", "loss"), ("train", "init_from"))  # fmt: skip


class TrainingInterrupted(ClipforgeError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; running the same command again resumes."""


@dataclass
class RunResult:
    run_dir: Path
    final_weights: Path | None  # safetensors, clipforge.load reads it (main process only)
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)  # the rows of metrics.jsonl


@dataclass
class _Run:
    """Everything one process's loop touches."""

    config: RunConfig
    dist: DistInfo
    run_dir: Path
    model: CLIP
    train_model: torch.nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: Any
    state: TrainState
    loss_fn: Callable[..., torch.Tensor]
    eval_fn: EvalFn | None  # on the main process only
    evaluates: bool  # the same on every process: whether rows at evaluation steps are written
    log: MetricsLog
    saved_step: int = -1


def build_model(config: RunConfig) -> CLIP:
    """The model to train, in train mode: fresh (``model`` + ``model_overrides``) or from
    ``train.init_from``; locked towers frozen (and a locked ResNet's BatchNorm in eval mode)."""
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


def train(config: RunConfig, eval_fn: EvalFn | None = None) -> RunResult:
    """Train as ``config`` says; resumes from the newest checkpoint in ``out_dir``.

    ``eval_fn(model, step) -> dict`` runs every ``train.eval_every`` steps and at the end; by
    default, zero-shot top-1 on ``data.val`` when it is set. Ctrl-C or SIGTERM stops at the next
    step boundary, saves a checkpoint and raises TrainingInterrupted.
    """
    check_run_config(config)
    dist = init_distributed(config.train.device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        with _StopRequest() as stop:
            return _train(config, dist, eval_fn, stop)
    finally:
        cleanup()


def _train(config: RunConfig, dist: DistInfo, eval_fn: EvalFn | None, stop: "_StopRequest") -> RunResult:
    data = open_training_data(config, dist)
    run = _setup(config, dist, eval_fn)
    run.state.total_steps = run.state.total_steps or _total_steps(config, data)
    preprocess = create_preprocess(run.model, train=config.data.augment, style=config.data.style)
    # The text tower's own tokenizer (CLIP's BPE as a partial, or a SigLIP/XLM-R tokenizer):
    # picklable, as streaming workers started with spawn receive it.
    tok = create_tokenizer(run.model)
    try:
        with Progress(enabled=dist.is_main, total=run.state.total_steps, done=run.state.step) as progress:
            _loop(run, data, preprocess, tok, progress, stop)
    except _Stopped:
        _save(run)
        barrier()
        raise TrainingInterrupted(
            f"interrupted at step {run.state.step}; a checkpoint was saved in {run.run_dir}/checkpoints, "
            "run the same command again to resume"
        ) from None
    return _finish(run)


def _total_steps(config: RunConfig, data: TrainingData) -> int:
    if not config.train.epochs:
        return config.train.steps
    per_epoch = data.batches_per_epoch()
    if per_epoch is None:
        raise DataError("train.epochs needs the number of samples per epoch: set data.epoch_samples, or keep a "
                        "sizes.json beside the shards (clipforge data shards writes one), or use train.steps")  # fmt: skip
    if per_epoch == 0:
        raise DataError(f"an epoch of data.epoch_samples holds less than one global batch "
                        f"({config.train.batch_size} per process); raise data.epoch_samples or lower train.batch_size")  # fmt: skip
    return config.train.epochs * per_epoch


def _setup(config: RunConfig, dist: DistInfo, eval_fn: EvalFn | None) -> _Run:
    t = config.train
    run_dir = Path(config.out_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / "config.json", suffix=".json") as tmp:
            tmp.write_text(config.to_json())
    model = build_model(config).to(dist.device)
    optimizer = make_optimizer(model, t.lr, t.weight_decay, t.betas, t.eps)
    scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None
    state = _resume(config, run_dir, model, optimizer, scaler, dist)
    train_model: torch.nn.Module = model
    if dist.world_size > 1:
        # DDP averages gradients over processes; the losses module scales what it gathers to match.
        ids = None if dist.device == "cpu" else [dist.local_rank]
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    loss_fn = make_loss(t.loss, dist.rank, dist.world_size, t.local_loss)
    evaluates = eval_fn is not None or bool(config.data.val)
    if eval_fn is None and config.data.val and dist.is_main:
        val_preprocess = create_preprocess(model)
        eval_fn = zeroshot_eval_fn(config.data.val, val_preprocess, config.data.val_templates, config.data.val_max_images)
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=dist.is_main, resume_step=state.step)
    return _Run(config, dist, run_dir, model, train_model, optimizer, scaler, state, loss_fn, eval_fn, evaluates, log,
                state.step)  # fmt: skip


def _resume(config: RunConfig, run_dir: Path, model, optimizer, scaler, dist: DistInfo) -> TrainState:
    mode = config.train.resume
    fresh = TrainState(world_size=dist.world_size)
    if mode == "never":
        existing = checkpoint_paths(run_dir)
        if existing:  # its checkpoints and metrics would be mixed with (and pruned by) this run's
            raise TrainingError(f"{run_dir} already holds checkpoints of a run (newest {existing[0].name}) and "
                                "train.resume=never: choose a new out_dir, or delete that run's checkpoints")  # fmt: skip
        return fresh
    if dist.is_main:
        remove_partial_writes(run_dir)
    if mode == "auto":
        found = latest_state(run_dir)
    else:
        path = Path(mode)
        if not path.is_file():
            raise TrainingError(f"resume checkpoint {path} does not exist; give a step-*.pt file, 'auto' or 'never'")
        found = (path, torch.load(path, map_location="cpu", weights_only=True))
    if found is None:
        return fresh
    _check_compatible(found[0], found[1], config, dist)
    return restore(found[1], model, optimizer, scaler)


def _check_compatible(path: Path, payload: dict[str, Any], config: RunConfig, dist: DistInfo) -> None:
    saved = json.loads(payload.get("config") or "{}")
    now = json.loads(config.to_json())
    for keys in _RESUME_KEYS:
        old, new = saved, now
        for k in keys:
            old, new = (old or {}).get(k, new.get(k)), new.get(k)  # a key the checkpoint predates: same
        if saved and old != new:
            raise TrainingError(f"{path} was written with {'.'.join(keys)}={old!r} but this run has {new!r}; "
                                "resuming would not continue the same run: use a new out_dir or set train.resume=never")  # fmt: skip
    world = payload.get("state", {}).get("world_size", dist.world_size)
    if world != dist.world_size:
        raise TrainingError(f"{path} was written by {world} process(es), this run has {dist.world_size}; "
                            "resume with the same number of processes (the data order depends on it)")  # fmt: skip


def _loop(run: _Run, data: TrainingData, preprocess, tok, progress: Progress, stop: "_StopRequest") -> None:
    t, state, dist = run.config.train, run.state, run.dist
    guard = SkipGuard(t.max_consecutive_skips)
    clock = _Clock(t.max_minutes, state.total_steps)
    while state.step < state.total_steps:
        steps_before, resumed_mid_epoch = state.step, state.batch > 0
        for batch in _batches(data.loader(state, preprocess, tok), stop, run, agree=data.streaming):
            lr = lr_at(state.step, t.lr, t.warmup_steps, state.total_steps)
            result = _step(run, batch, lr)
            guard.update(result, state.step)
            state.total_steps = clock.update(state.step, state.total_steps, progress)
            progress.update(_record(run, result, lr, batch.images.shape[0] * dist.world_size / clock.lap()))
            if state.step % t.checkpoint_every == 0:
                _save(run)
            clock.lap()  # evaluation and checkpoint time do not count as training speed
            if state.step >= state.total_steps:
                return
            if stop.agreed(dist):
                raise _Stopped
        if state.step == steps_before and not resumed_mid_epoch:
            raise DataError(f"epoch {state.epoch} gave no full batch of {t.batch_size} samples on some process: "
                            "the shards are empty, unreadable, or too few for the processes and workers")  # fmt: skip
        state.epoch, state.batch, state.stream = state.epoch + 1, 0, {}


def _batches(loader, stop: "_StopRequest", run: _Run, agree: bool):
    """The loader's training batches. A loader broken by the interrupt (Ctrl-C also reaches its
    worker processes, which exit) counts as the interrupt, not as a crash. A streamed epoch
    ends for every process when one has no batch left (``agree``: they must step together)."""
    iterator = iter(loader)
    while True:
        batch = _next_batch(iterator, stop, run)
        if agree and run.dist.world_size > 1:
            flag = torch.tensor([float(batch is not None)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            if not flag.item():
                return
        if batch is None:
            return
        yield batch


def _next_batch(iterator, stop: "_StopRequest", run: _Run) -> Batch | None:
    """The next batch with samples; a streaming worker's empty end-of-data batch only reports
    what it left out."""
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return None
        except RuntimeError:
            if stop.requested:
                raise _Stopped from None
            raise
        _account(run, batch)
        if batch.size:
            return batch


def _account(run: _Run, batch: Batch) -> None:
    """Counters and the stream position, kept for the batches the loop consumed."""
    state = run.state
    state.skipped_samples += len(batch.skipped)
    for s in batch.skipped:
        state.skipped_by_reason[s.reason] = state.skipped_by_reason.get(s.reason, 0) + 1
    for name, n in batch.sources.items():
        state.samples_by_source[name] = state.samples_by_source.get(name, 0) + n
    if batch.cursor is not None:
        state.stream = advance_position(state.stream, batch, max(1, run.config.data.workers))


def _step(run: _Run, batch, lr: float) -> StepResult:
    t, state, device = run.config.train, run.state, run.dist.device
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    result = train_step(run.train_model, run.loss_fn, batch.images.to(device), batch.tokens.to(device), run.optimizer,
                        micro_batch=t.micro_batch, precision=t.precision, scaler=run.scaler,
                        max_grad_norm=t.max_grad_norm)  # fmt: skip
    state.step += 1
    state.batch += 1
    state.skipped_steps += int(result.skipped)
    return result


def _record(run: _Run, result: StepResult, lr: float, samples_per_s: float) -> dict[str, Any]:
    """One metrics row; written every ``log_every`` steps, at evaluations and at the end."""
    t, state = run.config.train, run.state
    row = {"step": state.step, "epoch": state.epoch, "loss": result.loss, "lr": lr,
           "logit_scale": float(run.model.scale().detach()), "samples_per_s": samples_per_s,
           "skipped": result.skipped, "grad_norm": result.grad_norm,
           "skipped_steps": state.skipped_steps, "skipped_samples": state.skipped_samples}  # fmt: skip
    if state.skipped_by_reason:
        row["skipped_by_reason"] = dict(sorted(state.skipped_by_reason.items()))
    if state.samples_by_source:
        row["samples_by_source"] = dict(state.samples_by_source)
    last = state.step >= state.total_steps
    evaluate = run.evaluates and ((t.eval_every and state.step % t.eval_every == 0) or last)
    if state.step % t.log_every == 0 or evaluate or last:
        # The same condition on every rank (evaluate depends on the step only): all join the mean.
        row["loss"] = float(all_reduce_mean(torch.tensor(result.loss)))
        if evaluate and run.eval_fn is not None:
            row.update(_evaluate(run.model, run.eval_fn, state.step))  # type: ignore[arg-type]
        run.log.write(row)
    return row


def _save(run: _Run) -> None:
    if run.dist.is_main and run.saved_step != run.state.step:
        t = run.config.train
        save_state(run.run_dir, run.model, run.optimizer, run.scaler, run.state, t.keep_last, run.config.to_json())
        run.saved_step = run.state.step


def _finish(run: _Run) -> RunResult:
    _save(run)
    final = checkpoint.save(run.model, run.run_dir / "final.safetensors") if run.dist.is_main else None
    # Leave together: a process that tears down its connections while the main one is still
    # writing can make gloo abort the main one.
    barrier()
    return RunResult(run.run_dir, final, run.state, run.log.rows)


def _evaluate(model: CLIP, eval_fn: EvalFn, step: int) -> dict[str, float]:
    frozen_bn = not any(p.requires_grad for p in model.visual.parameters())
    with_step = len(inspect.signature(eval_fn).parameters) >= 2
    model.eval()
    try:
        with torch.no_grad():
            return dict(eval_fn(model, step) if with_step else eval_fn(model))
    finally:
        model.train()
        if frozen_bn:  # a locked image tower keeps its BatchNorm statistics
            model.visual.eval()


class _Clock:
    """Per-step timing, and the step count a wall-clock budget allows (measured over the
    steps after a short warm-up)."""

    def __init__(self, max_minutes: float | None, cap: int) -> None:
        self.max_minutes, self.cap = max_minutes, cap
        self.started = self.last = time.perf_counter()
        self.probe_start: float | None = None

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = max(1e-9, now - self.last), now
        return elapsed

    def update(self, step: int, total: int, progress: Progress) -> int:
        """The step count that fits the budget: estimated after a warm-up, re-estimated every
        ``_REESTIMATE_EVERY`` steps from the average pace since (evaluations and checkpoints
        included, and other load on the machine), and cut at the step the budget runs out."""
        if not self.max_minutes:
            return total
        now = time.perf_counter()
        budget, elapsed = self.max_minutes * 60, now - self.started
        if step == _SPEED_PROBE_STEPS:
            self.probe_start = now
        if elapsed >= budget:
            total = step
        elif self.probe_start is not None and (step == 2 * _SPEED_PROBE_STEPS or step % _REESTIMATE_EVERY == 0):
            per_step = (now - self.probe_start) / max(1, step - _SPEED_PROBE_STEPS)
            total = max(step + 1, min(self.cap, step + int((budget - elapsed) / per_step)))
        else:
            return total
        progress.set_total(total)
        return total


class _Stopped(Exception):
    """Internal: every process agreed to stop at this step boundary."""


class _StopRequest:
    """Turns Ctrl-C and SIGTERM into a request honoured at the next step boundary, so the saved
    checkpoint is never from the middle of an optimiser update. A second Ctrl-C stops at once
    (no save; the last periodic checkpoint stays). Only the main thread can install handlers;
    elsewhere the defaults stay."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def agreed(self, dist: DistInfo) -> bool:
        """True when any process was asked to stop: all must stop at the same step."""
        if dist.world_size == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ClipforgeError(f"{run_dir} has no metrics.jsonl; give the out_dir of a clipforge training run")
    rows = read_jsonl(path)
    if not rows:
        raise ClipforgeError(f"{path} holds no metrics yet; train for at least train.log_every steps first")
    return rows
