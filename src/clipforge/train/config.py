"""A training run as data: frozen dataclasses, read from JSON, overridden by dotted keys."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import apply_overrides
from ..style import StyleConfig
from ..errors import ConfigError

__all__ = ["DataConfig", "StyleConfig", "TrainConfig", "RunConfig", "load_run_config", "parse_overrides", "check_run_config"]

PRECISIONS = ("fp32", "bf16", "fp16")
LOSSES = ("clip", "siglip")


@dataclass(frozen=True)
class DataConfig:
    train: str = "synthetic:512"  # CSV/TSV, JSONL, image folder, .tar shards, a built data set dir
    # Several shard sets "a/{000..999}.tar::b/{000..099}.tar" mixed by weight, one per "::" part.
    train_weights: tuple[float, ...] | None = None
    # Streaming (data/shard_sets.py): null = automatic (shards over 1 GiB, weights or resampling),
    # true = stream shards, false = read the source into memory.
    stream: bool | None = None
    resampled: bool = False  # streaming: shards drawn with replacement (needs an epoch length)
    epoch_samples: int | None = None  # streaming: samples per epoch (default: all, where known)
    shuffle_buffer: int = 2000  # streaming: samples held per worker for shuffling
    image_key: str = "image"
    caption_key: str = "caption"
    workers: int = 0
    spread_concepts: bool = True  # at most one sample per concept in a batch (no false negatives)
    # Held-out evaluation during training: a built data set dir (its "heldout" split), or any
    # source `train` accepts; class = each sample's concept (else its first caption).
    val: str | None = None
    val_templates: str = "simple"  # a template set of clipforge.eval.templates, or a file
    val_max_images: int = 2000  # decoded once and kept in memory
    # A built data set (clipforge data build) whose held-out and val concepts stay out of the
    # other '::' sources mixed with it: their samples naming one (concept or caption) are left out.
    exclude_concepts: str | None = None
    augment: bool = True  # false: no training augmentation at all (the eval transform)
    # Style-robust augmentation (style.py): a probability per operation, and the crop range.
    style: StyleConfig = field(default_factory=StyleConfig)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64  # per process
    micro_batch: int | None = None  # gradient cache below this
    steps: int = 1000
    epochs: int | None = None  # when set, replaces `steps` by epochs x batches per epoch
    max_minutes: float | None = None  # wall-clock budget: fixes `steps` from the measured speed
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (GPU)
    seed: int = 0
    grad_checkpointing: bool = False
    loss: str = "clip"  # clip | siglip
    local_loss: bool = False
    lock_image: bool = False
    lock_text: bool = False
    init_from: str | None = None  # any checkpoint clipforge.load reads
    checkpoint_every: int = 100
    keep_last: int = 2
    eval_every: int = 0
    log_every: int = 10
    max_consecutive_skips: int = 10
    resume: str = "auto"  # auto | never | PATH
    threads: int | None = None
    device: str | None = None  # None: cuda when available, else cpu


@dataclass(frozen=True)
class RunConfig:
    model: str = "tiny-vit"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/run"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise ConfigError(f"unknown run config key(s) {sorted(unknown)}; valid keys: {sorted(valid)}")
        kwargs = dict(data)
        for key, sub in (("data", DataConfig), ("train", TrainConfig)):
            if key in kwargs:
                kwargs[key] = _sub(sub, kwargs[key], key)
        return cls(**kwargs)


def _sub(cls: type, data: dict[str, Any], prefix: str) -> Any:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - valid
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(f'{prefix}.{k}' for k in unknown)}; valid: {sorted(valid)}")
    for key in ("betas", "train_weights"):  # JSON gives lists; the frozen config keeps tuples
        if isinstance(data.get(key), list):
            data = {**data, key: tuple(data[key])}
    if isinstance(data.get("style"), dict):
        data = {**data, "style": StyleConfig.from_dict(data["style"])}
    return cls(**data)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "data.train=x.csv"]`` -> dict; values are JSON when they parse."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value, e.g. train.lr=3e-4")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def load_run_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    config = RunConfig()
    if path is not None:
        try:
            config = RunConfig.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"run config {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"run config {path} is not valid JSON ({e})") from None
    if overrides:
        for key in ("train.betas", "data.train_weights", "data.style.crop_scale"):
            if isinstance(overrides.get(key), list):
                overrides = {**overrides, key: tuple(overrides[key])}
        config = apply_overrides(config, overrides)
    check_run_config(config)
    return config


def check_run_config(config: RunConfig) -> None:
    """Reject values that would only fail later, deep in the run, with a clearer sentence now."""
    t = config.train
    problems = []
    if t.precision not in PRECISIONS:
        problems.append(f"train.precision {t.precision!r} is not one of {', '.join(PRECISIONS)}")
    if t.loss not in LOSSES:
        problems.append(f"train.loss {t.loss!r} is not one of {', '.join(LOSSES)}")
    for key in ("batch_size", "steps", "checkpoint_every", "keep_last", "log_every"):
        value = getattr(t, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"train.{key} must be a whole number >= 1 (got {value!r})")
    if t.epochs is not None and (not isinstance(t.epochs, int) or t.epochs < 1):
        problems.append(f"train.epochs must be null or a whole number >= 1 (got {t.epochs!r})")
    if t.micro_batch is not None and (not isinstance(t.micro_batch, int) or t.micro_batch < 1):
        problems.append(f"train.micro_batch must be null or a whole number >= 1 (got {t.micro_batch!r})")
    d = config.data
    if d.epoch_samples is not None and (not isinstance(d.epoch_samples, int) or d.epoch_samples < 1):
        problems.append(f"data.epoch_samples must be null or a whole number >= 1 (got {d.epoch_samples!r})")
    if not isinstance(d.shuffle_buffer, int) or d.shuffle_buffer < 0:
        problems.append(f"data.shuffle_buffer must be a whole number >= 0 (got {d.shuffle_buffer!r})")
    if d.stream not in (None, True, False):
        problems.append(f"data.stream must be null, true or false (got {d.stream!r})")
    problems += d.style.problems() if isinstance(d.style, StyleConfig) else ["data.style must be an object of probabilities"]
    if t.lock_image and t.lock_text:
        problems.append("train.lock_image and train.lock_text are both set: nothing would train")
    if problems:
        raise ConfigError("; ".join(problems) + "; fix the config file or the --set values")
