"""`clipforge guide`: draw an image for a prompt by optimising an image parametrisation against
CLIP (no generator weights), and judge it with a second, independently trained model.

An image optimised against one model can fool that model: its score rising proves little. The
judge never sees the optimisation; only when its score rises too has the image gained something
both models see in the prompt. Both are reported, before and after.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image, ImageDraw

from ..checkpoint.io import atomic_path
from ..models.clip import CLIP
from .objective import ClipObjective, check_prompts, score_images
from .param import make_parametrisation

__all__ = ["GuideResult", "Snapshot", "synthesize", "run_guide", "contact_sheet", "to_pil", "write_outputs"]

Progress = Callable[[int, int, float], None]  # (step, steps, cutout similarity)


@dataclass
class Snapshot:
    step: int
    image: Image.Image
    guide_score: float  # whole-image cosine to the prompt, guiding model
    judge_score: float | None  # the same under the independent judge


@dataclass
class GuideResult:
    prompt: str
    image: Image.Image
    curve: list[float] = field(default_factory=list)  # per step: 1 - loss, the mean cutout cosine
    snapshots: list[Snapshot] = field(default_factory=list)  # step 0 first, the final image last

    def summary(self) -> dict:
        first, last = self.snapshots[0], self.snapshots[-1]
        out = {"prompt": self.prompt, "steps": len(self.curve),
               "guide": {"before": first.guide_score, "after": last.guide_score}}  # fmt: skip
        if last.judge_score is not None:
            out["judge"] = {"before": first.judge_score, "after": last.judge_score,
                            "rose": bool(last.judge_score > first.judge_score)}  # fmt: skip
        return out


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] -> RGB image."""
    array = (pixels[0].detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(array, "RGB")


def _snapshot(step: int, pixels: torch.Tensor, model: CLIP, judge: CLIP | None, prompts: list[str],
              truncate: bool) -> Snapshot:  # fmt: skip
    guide = float(score_images(model, pixels, prompts, truncate)[0])
    judged = None if judge is None else float(score_images(judge, pixels, prompts, truncate)[0])
    return Snapshot(step, to_pil(pixels), guide, judged)


def _snapshot_steps(steps: int, n: int) -> set[int]:
    return {round(i * steps / max(1, n - 1)) for i in range(n)} | {0, steps}


def synthesize(model: CLIP, prompts: str | Sequence[str], *, judge: CLIP | None = None,
               negative_prompts: str | Sequence[str] | None = None, steps: int = 200, size: int | None = None,
               param: str = "pyramid", lr: float = 0.05, cutouts: int = 16, seed: int = 0,
               snapshots: int = 8, truncate: bool = False, augment: bool = True,
               progress: Progress | None = None) -> GuideResult:  # fmt: skip
    """Optimise a fresh parametrisation (``pyramid`` or ``fourier``) of a ``size``-pixel image
    (default: twice the model's input) for ``steps`` Adam steps on ``ClipObjective.loss``.
    Snapshots (whole image, both models' scores) at ``snapshots`` evenly spaced steps.
    ``augment=False`` (with ``cutouts=1``) is the ablation: plain crops, easy to fool the guide with."""
    texts = check_prompts(prompts)
    image = make_parametrisation(param, size or 2 * model.image_size, seed=seed)
    # The cutouts' own generator: one seed, one image, and the caller's global RNG untouched.
    objective = ClipObjective(model, cutouts=cutouts, truncate=truncate, generator=torch.Generator().manual_seed(seed))
    optimiser = torch.optim.Adam(image.parameters(), lr=lr)
    result = GuideResult(" | ".join(texts), to_pil(image()))
    marks = _snapshot_steps(steps, snapshots)
    for step in range(steps + 1):
        pixels = image()  # (1, 3, size, size)
        if step in marks:
            result.snapshots.append(_snapshot(step, pixels.detach(), model, judge, texts, truncate))
        if step == steps:
            break
        loss = objective.loss(pixels, texts, negative_prompts=negative_prompts, augment=augment)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        result.curve.append(1 - loss.item())  # cosine to the prompts (minus the negatives' weighted cosine)
        if progress:
            progress(step + 1, steps, result.curve[-1])
    result.image = result.snapshots[-1].image
    return result


def contact_sheet(snapshots: Sequence[Snapshot], tile: int = 128) -> Image.Image:
    """The snapshots side by side, each labelled with its step and scores."""
    label_h = 46
    sheet = Image.new("RGB", (tile * len(snapshots), tile + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, snap in enumerate(snapshots):
        sheet.paste(snap.image.resize((tile, tile), Image.Resampling.NEAREST), (i * tile, 0))
        text = f"step {snap.step}\nguide {snap.guide_score:+.3f}"
        if snap.judge_score is not None:
            text += f"\njudge {snap.judge_score:+.3f}"
        draw.text((i * tile + 3, tile + 2), text, fill="black")
    return sheet


def _plot_curve(path: Path, result: GuideResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(range(1, len(result.curve) + 1), result.curve, lw=0.8, color="#bbbbbb", label="objective (cutouts)")
    steps = [s.step for s in result.snapshots]
    ax.plot(steps, [s.guide_score for s in result.snapshots], "o-", color="#4c72b0", label="guide model")
    if result.snapshots[0].judge_score is not None:
        ax.plot(steps, [s.judge_score for s in result.snapshots], "s-", color="#dd8452", label="independent judge")
    ax.set_xlabel("step")
    ax.set_ylabel("cosine to prompt")
    ax.set_title(result.prompt[:60])
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _save_image(image: Image.Image, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def write_outputs(result: GuideResult, out: Path, info: dict) -> dict:
    """OUT.png, OUT_sheet.png, OUT_curve.png and OUT.json (scores before/after, run settings)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    files = {"image": out, "sheet": Path(f"{stem}_sheet.png"), "curve": Path(f"{stem}_curve.png"),
             "json": Path(f"{stem}.json")}  # fmt: skip
    _save_image(result.image, files["image"])
    _save_image(contact_sheet(result.snapshots), files["sheet"])
    _plot_curve(files["curve"], result)
    summary = {**result.summary(), **info, "curve": result.curve, "files": {k: str(v) for k, v in files.items()},
               "snapshots": [{"step": s.step, "guide": s.guide_score, "judge": s.judge_score} for s in result.snapshots]}  # fmt: skip
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def run_guide(prompt: str, model_spec: str, out: Path, *, judge_spec: str | None = None,
              negative_prompts: Sequence[str] = (), show_progress: bool = True, **options) -> dict:  # fmt: skip
    """Load the guide (and judge), synthesise, write the files; returns the JSON summary.
    ``options`` go to ``synthesize`` (steps, size, param, lr, cutouts, seed, snapshots, truncate)."""
    from ..checkpoint import load

    check_prompts(prompt)
    model, _ = load(model_spec)
    judge = load(judge_spec)[0] if judge_spec else None
    info = {"model": model_spec, "judge_model": judge_spec, "negative_prompts": list(negative_prompts),
            "judge_independent": bool(judge_spec) and judge_spec != model_spec, **options}  # fmt: skip
    with _progress_bar(show_progress, options.get("steps", 200)) as progress:
        result = synthesize(model, prompt, judge=judge, negative_prompts=list(negative_prompts) or None,
                            progress=progress, **options)  # fmt: skip
    return write_outputs(result, out, info)


@contextmanager
def _progress_bar(show: bool, steps: int) -> Iterator[Progress | None]:
    """A rich progress bar showing the objective, or nothing."""
    if not show:
        yield None
        return
    from rich.progress import Progress as Bar

    with Bar(*Bar.get_default_columns(), "{task.fields[score]}") as bar:
        task = bar.add_task("guiding", total=steps, score="")
        yield lambda step, total, score: bar.update(task, completed=step, score=f"cos {score:+.3f}")
