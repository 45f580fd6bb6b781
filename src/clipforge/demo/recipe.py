"""The demo's training recipes: what `clipforge demo` trains, chosen for ten minutes on a 2-core
CPU.

- "robust" (opt-in, ``clipforge demo --recipe robust``): OpenMoji mixed with the clip-art sets clipforge builds from Debian's
  packages (Tux Paint stamps, Openclipart), where installed, and the style-robust augmentation of
  ``style.py``. Clip-art samples naming an OpenMoji held-out or val concept are left out,
  so "held-out concepts" stay unseen. It becomes the default once ``bench/style_ablation.py``
  and ``bench/demo_vs_open_clip.py`` show it keeps held-out top-1 at the demo's budget (README:
  "Robust to style shift" has the figures so far).
- "openmoji" (the default): the wave-1 recipe, OpenMoji only with open_clip's mild crop: the
  reference the robust recipe is measured against.

No recipe trains on another rendering of the emoji set (an emoji font, another emoji image set):
those renderings are how ``clipforge eval shift`` measures robustness.
"""

from __future__ import annotations

from pathlib import Path

from ..style import StyleConfig
from ..train.config import DataConfig, RunConfig, TrainConfig

__all__ = ["RECIPES", "CLIPART_WEIGHTS", "ROBUST_STYLE", "demo_run_config", "demo_precision"]

RECIPES = ("robust", "openmoji")
# Share of each epoch per source (OpenMoji ~3,500 training images, Tux Paint ~800, Openclipart
# ~6,900): OpenMoji stays the largest part, the clip-art adds other artists' ways of drawing.
CLIPART_WEIGHTS = {"openmoji": 0.6, "tuxpaint": 0.1, "openclipart": 0.3}
ROBUST_STYLE = StyleConfig(colour_jitter=0.3, grayscale=0.1, outline=0.15, posterize=0.1, padding=0.5,
                           background=0.2, blur_sharpen=0.2, crop_scale=(0.6, 1.0))  # fmt: skip


def demo_precision(device: str = "cpu") -> str:
    """bf16 where the CPU computes it natively (AVX-512 BF16, AMX: ~1.9x fp32's step rate at the
    demo's size on Zen 4),
    else fp32 (an AVX2-only CPU emulates bf16, slower than fp32); GPUs take bf16."""
    if device != "cpu":
        return "bf16"
    from ..inference.engine import cpu_supports_bf16

    return "bf16" if cpu_supports_bf16() else "fp32"


def demo_run_config(data_dir: Path, out_dir: Path, minutes: float, device: str = "cpu", threads: int | None = None,
                    recipe: str = "openmoji", clipart: dict[str, Path] | None = None,
                    style: StyleConfig | None = None) -> RunConfig:  # fmt: skip
    """``clipart``: name -> built data set dir of the clip-art sources to mix in (robust recipe;
    those missing are left out and the weights renormalised). ``style`` overrides the recipe's."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown demo recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    robust = recipe == "robust"
    sources = {"openmoji": data_dir, **((clipart or {}) if robust else {})}
    mixed = len(sources) > 1
    return RunConfig(
        model="demo",
        data=DataConfig(
            train="::".join(str(p) for p in sources.values()),
            train_weights=tuple(CLIPART_WEIGHTS[name] for name in sources) if mixed else None,
            stream=False if mixed else None,  # small sets: in memory, where concept-aware batches work
            exclude_concepts=str(data_dir) if mixed else None,
            workers=1,  # decode and augment the next batch while the two cores train on this one
            spread_concepts=True,  # skin tones of one emoji in one batch would be false negatives
            augment=True,
            style=style if style is not None else (ROBUST_STYLE if robust else StyleConfig()),
        ),
        train=TrainConfig(
            batch_size=256,
            steps=100_000,  # an upper bound: the wall-clock budget fixes the real count
            max_minutes=minutes,
            lr=1e-3,
            weight_decay=0.1,
            warmup_steps=50,
            precision=demo_precision(device),
            checkpoint_every=100,
            eval_every=100,
            log_every=10,
            threads=threads,
            device=device,
        ),
        out_dir=str(out_dir / "run"),
    )
