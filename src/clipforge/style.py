"""Style-robust augmentation: change how a picture is drawn, keep what it shows.

CLIP's robustness to distribution shift comes from the variety of its data. A model trained on
one art style (flat OpenMoji drawings with a thick outline, on white, with a margin) learns that
style's accidents: line weight, exact colours, the margin. Each operation here removes one such
cue, with its own probability (``StyleConfig``; 0 turns it off):

- ``colour_jitter``: brightness, contrast, saturation and a small hue shift (small: colour names
  a concept as often as not, "red heart" vs "blue heart").
- ``grayscale``: colour removed.
- ``outline``: the picture redrawn as its edges, dark lines on white (line art, sketches), or
  the reverse, its thin dark outline erased (flat colour, as other emoji sets draw).
- ``blur_sharpen``: a Gaussian blur of random radius, or an unsharp mask.
- ``posterize``: few colour levels per channel (flat print, low-colour icons).
- ``background``: the white background replaced by a random colour or a two-colour gradient.
- ``padding``: the drawing shrunk onto a larger canvas, or cropped to its bounding box, so the
  margin around it varies (another artist's glyph fills its box differently).

Random resized crops are the geometry step that follows (``StyleConfig.crop_scale``, passed to
``transforms.image_transform``). Every gate and per-operation seed comes from torch's generator, which
``data.batch.prepare_sample`` seeds per sample: a resumed run augments each sample the same way.
PIL operations run per sample in the DataLoader workers, at training resolution, so they cost
the training step nothing where ``data.workers`` >= 1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from PIL import Image, ImageChops, ImageEnhance, ImageFilter, ImageOps

from .errors import ConfigError

__all__ = ["StyleConfig", "StyleAugment", "STYLE_OPS"]

# The operations, in the order they apply: colour and rendering first (on the original palette),
# then the canvas (margin, background: both find the white background, so before anything else
# repaints it), blur last (it softens whatever was drawn).
STYLE_OPS = ("colour_jitter", "grayscale", "outline", "posterize", "padding", "background", "blur_sharpen")


@dataclass(frozen=True)
class StyleConfig:
    """Probability of each style operation per training sample (0 = off), and the random
    resized crop's area range."""

    colour_jitter: float = 0.0
    grayscale: float = 0.0
    outline: float = 0.0
    posterize: float = 0.0
    padding: float = 0.0
    background: float = 0.0
    blur_sharpen: float = 0.0
    crop_scale: tuple[float, float] = (0.9, 1.0)  # open_clip's default random resized crop

    def problems(self) -> list[str]:
        out = [f"data.style.{op} must be a probability in [0, 1] (got {getattr(self, op)!r})"
               for op in STYLE_OPS if not _is_probability(getattr(self, op))]  # fmt: skip
        lo, hi = (tuple(self.crop_scale) + (None, None))[:2]
        if len(self.crop_scale) != 2 or not (_is_probability(lo) and _is_probability(hi) and 0 < lo <= hi):
            out.append(f"data.style.crop_scale must be [low, high] with 0 < low <= high <= 1 (got {list(self.crop_scale)})")
        return out

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(op for op in STYLE_OPS if getattr(self, op) > 0)

    @classmethod
    def from_dict(cls, data: dict) -> "StyleConfig":
        valid = {f.name for f in fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(f'data.style.{k}' for k in unknown)}; valid: {sorted(valid)}")
        if isinstance(data.get("crop_scale"), list):
            data = {**data, "crop_scale": tuple(data["crop_scale"])}
        return cls(**data)


def _is_probability(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _chance(g: torch.Generator, p: float = 0.5) -> bool:
    return torch.rand((), generator=g).item() < p


class StyleAugment:
    """PIL image -> PIL image with the configured style operations drawn at random.
    A class (not a closure) so spawned DataLoader workers can receive it."""

    def __init__(self, config: StyleConfig) -> None:
        self.config = config

    def __call__(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        # Every operation's gate and seed are drawn up front, whether or not it is on, and each
        # runs on its own seed: switching one operation off leaves the others' choices as they
        # were, so an ablation's rows differ by that operation alone.
        gates = torch.rand(len(STYLE_OPS)).tolist()
        seeds = torch.randint(0, 2**62, (len(STYLE_OPS),)).tolist()
        for op, gate, seed in zip(STYLE_OPS, gates, seeds):
            if gate < getattr(self.config, op):
                image = getattr(self, f"_{op}")(image, torch.Generator().manual_seed(seed))
        return image

    def __repr__(self) -> str:
        return f"StyleAugment({', '.join(f'{op}={getattr(self.config, op)}' for op in self.config.active)})"

    @staticmethod
    def _colour_jitter(image: Image.Image, g: torch.Generator) -> Image.Image:
        # torchvision's ColorJitter on PIL images costs ~14 ms at 48 px (its hue step); PIL's
        # enhancers and a hue roll in HSV do the same in well under 1 ms.
        image = ImageEnhance.Brightness(image).enhance(_uniform(g, 0.6, 1.4))
        image = ImageEnhance.Contrast(image).enhance(_uniform(g, 0.6, 1.4))
        image = ImageEnhance.Color(image).enhance(_uniform(g, 0.3, 1.7))
        shift = int(round(_uniform(g, -0.05, 0.05) * 255))
        if shift:
            h, s, v = image.convert("HSV").split()
            h = h.point(lambda x: (x + shift) % 256)
            image = Image.merge("HSV", (h, s, v)).convert("RGB")
        return image

    @staticmethod
    def _grayscale(image: Image.Image, g: torch.Generator) -> Image.Image:
        return ImageOps.grayscale(image).convert("RGB")

    @staticmethod
    def _outline(image: Image.Image, g: torch.Generator) -> Image.Image:
        # Half the time line art: the luminance's strong edges as dark lines on white.
        # Otherwise the reverse: thin dark strokes erased (a grey-level opening), leaving flat
        # colour without the drawing's outline, as many emoji artists draw.
        if _chance(g):
            return image.filter(ImageFilter.MaxFilter(3))
        grey = ImageOps.expand(ImageOps.grayscale(image), border=1, fill=255)  # no edge at the frame
        edges = grey.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 96 else 0)
        edges = edges.crop((1, 1, edges.width - 1, edges.height - 1))
        return ImageOps.invert(edges).convert("RGB")

    @staticmethod
    def _posterize(image: Image.Image, g: torch.Generator) -> Image.Image:
        return ImageOps.posterize(image, int(torch.randint(1, 4, (), generator=g).item()))

    @staticmethod
    def _blur_sharpen(image: Image.Image, g: torch.Generator) -> Image.Image:
        if _chance(g, 0.6):
            radius = _uniform(g, 0.4, 0.04 * min(image.size))  # up to 2 px at 48 px
            return image.filter(ImageFilter.GaussianBlur(radius))
        return image.filter(ImageFilter.UnsharpMask(radius=2, percent=int(_uniform(g, 100, 300)), threshold=2))

    @staticmethod
    def _background(image: Image.Image, g: torch.Generator) -> Image.Image:
        # Near-white pixels are the background in white-backed clip-art; they take a random
        # colour, or a vertical gradient between two, and the drawing stays on top.
        colours = [tuple(int(c) for c in torch.randint(0, 256, (3,), generator=g).tolist()) for _ in range(2)]
        if _chance(g):
            fill = Image.new("RGB", image.size, colours[0])
        else:
            ramp = Image.linear_gradient("L").resize(image.size)
            fill = Image.composite(Image.new("RGB", image.size, colours[0]), Image.new("RGB", image.size, colours[1]), ramp)
        background = ImageOps.grayscale(ImageChops.invert(image)).point(lambda v: 255 if v < 16 else 0)
        return Image.composite(fill, image, background)

    @staticmethod
    def _padding(image: Image.Image, g: torch.Generator) -> Image.Image:
        w, h = image.size
        if _chance(g):
            # Tight: crop to the drawing's bounding box (what a font glyph's box looks like).
            box = ImageOps.invert(ImageOps.grayscale(image)).point(lambda v: 255 if v > 16 else 0).getbbox()
            if box is None:
                return image
            crop = image.crop(box)
            side = max(crop.size)
            square = Image.new("RGB", (side, side), "white")
            square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
            return square.resize((w, h), Image.Resampling.BICUBIC)
        # Loose: shrink onto a larger white canvas at a random place.
        scale = _uniform(g, 0.55, 0.9)
        small = image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (w, h), "white")
        x = int(torch.randint(0, w - small.width + 1, (), generator=g).item())
        y = int(torch.randint(0, h - small.height + 1, (), generator=g).item())
        canvas.paste(small, (x, y))
        return canvas
