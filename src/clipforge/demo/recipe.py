"""The demo's training recipe: what `clipforge demo` trains, chosen for ten minutes on a 2-core
CPU with OpenMoji (about 3,600 training images of 1,700 concepts)."""

from __future__ import annotations

from pathlib import Path

from ..train.config import DataConfig, RunConfig, TrainConfig

__all__ = ["demo_run_config"]


def demo_run_config(data_dir: Path, out_dir: Path, minutes: float, device: str = "cpu",
                    threads: int | None = None) -> RunConfig:
    return RunConfig(
        model="demo",
        data=DataConfig(
            train=str(data_dir),
            workers=1,  # decode the next batch while the two cores train on this one
            spread_concepts=True,  # skin tones of one emoji in one batch would be false negatives
            augment=True,
        ),
        train=TrainConfig(
            batch_size=256,
            steps=100_000,  # an upper bound: the wall-clock budget fixes the real count
            max_minutes=minutes,
            lr=1e-3,
            weight_decay=0.1,
            warmup_steps=50,
            precision="bf16",  # AVX-512 BF16 on this CPU: about 1.3x the fp32 step rate
            checkpoint_every=100,
            eval_every=100,
            log_every=10,
            threads=threads,
            device=device,
        ),
        out_dir=str(out_dir / "run"),
    )
