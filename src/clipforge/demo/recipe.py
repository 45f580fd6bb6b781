"""The demo's training recipes: what `clipforge demo` trains, chosen for ten minutes on a 2-core
CPU.

- "robust" (the default): OpenMoji with light style augmentation (``ROBUST_STYLE``: grey-scale
  on 20 % of samples, colour jitter and blur/sharpen on 10 %, a changed margin on 20 %). At
  1,000 steps it raised held-out top-1 (41.6 % vs 32.5 %) and every unseen style (grey-scale
  3.6x, blurred 3.8x, OpenMoji's colour font 1.7x, Noto Color Emoji 2.0x) over the wave-1
  recipe (README: "Style-robust training").
- "mix" (opt-in): the same augmentation on OpenMoji mixed with the clip-art sets clipforge builds
  from Debian's packages (Tux Paint stamps, Openclipart), where installed. Clip-art samples
  naming an OpenMoji held-out or val concept are left out, so "held-out concepts" stay unseen.
  Measured lower than "robust" in every style at the demo's budget: the clip-art takes steps
  from OpenMoji's concepts and does not draw like an emoji font.
- "openmoji": the wave-1 recipe, OpenMoji only with open_clip's mild crop: the reference the
  others are measured against.

No recipe trains on another rendering of the emoji set (an emoji font, another emoji image set):
those renderings are how ``clipforge eval shift`` measures robustness.
"""

from __future__ import annotations

from pathlib import Path

from ..style import StyleConfig
from ..train.config import DataConfig, RunConfig, TrainConfig

__all__ = ["RECIPES", "CLIPART_WEIGHTS", "ROBUST_STYLE", "demo_run_config", "demo_precision"]

RECIPES = ("robust", "mix", "openmoji")
# Share of each epoch per source (OpenMoji ~3,500 training images, Tux Paint ~800, Openclipart
# ~6,900): OpenMoji stays the largest part, the clip-art adds other artists' ways of drawing.
CLIPART_WEIGHTS = {"openmoji": 0.6, "tuxpaint": 0.1, "openclipart": 0.3}
# Light on purpose: the heavier setting (every operation, 10-50 % each, crops down to 60 % of the
# area) lowered held-out top-1 from 25.7 % to 10.6 % at 250 steps; the small model spends its few
# steps on the harder task (bench/style_ablation.py).
# grayscale 0.2, not 0.1: at 1,000 steps it raised held-out top-1 38.4 -> 41.6 % and grey-scale
# 47 -> 64 % with no style lower (bench/results/style_ablation_1000_avx2.json).
ROBUST_STYLE = StyleConfig(colour_jitter=0.1, grayscale=0.2, padding=0.2, blur_sharpen=0.1)


def demo_precision(device: str = "cpu") -> str:
    """bf16 where the CPU computes it natively (AVX-512 BF16, AMX: ~1.9x fp32's step rate at the
    demo's size on Zen 4),
    else fp32 (an AVX2-only CPU emulates bf16, slower than fp32); GPUs take bf16."""
    if device != "cpu":
        return "bf16"
    from ..inference.engine import cpu_supports_bf16

    return "bf16" if cpu_supports_bf16() else "fp32"


def demo_run_config(data_dir: Path, out_dir: Path, minutes: float, device: str = "cpu", threads: int | None = None,
                    recipe: str = "robust", clipart: dict[str, Path] | None = None,
                    style: StyleConfig | None = None) -> RunConfig:  # fmt: skip
    """``clipart``: name -> built data set dir of the clip-art sources to mix in ("mix" recipe;
    those missing are left out and the weights renormalised). ``style`` overrides the recipe's."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown demo recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    sources = {"openmoji": data_dir, **((clipart or {}) if recipe == "mix" else {})}
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
            style=style if style is not None else (StyleConfig() if recipe == "openmoji" else ROBUST_STYLE),
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
