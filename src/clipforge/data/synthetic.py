"""Synthetic coloured shapes with matching captions ("a red circle"): a learnable data set
that needs no files, deterministic by seed. For tests and smoke runs (``synthetic:N``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .items import Item

__all__ = ["synthetic_items", "COLOURS", "SHAPES"]

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class ShapeImage:
    """Draws one shape when called (a class, not a closure, so items pickle)."""

    colour: str
    shape: str
    jitter: int
    size: int

    def __call__(self) -> Image.Image:
        size, jitter, fill = self.size, self.jitter, COLOURS[self.colour]
        image = Image.new("RGB", (size, size), "white")
        box = (size // 8 + jitter, size // 8, size - size // 8, size - size // 8 - jitter)
        draw = ImageDraw.Draw(image)
        if self.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif self.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
        return image


def synthetic_items(n: int, seed: int = 0, size: int = 32) -> list[Item]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        jitter = rng.randint(0, size // 8)
        concept = f"{colour} {shape}"
        captions = (f"a {concept}", f"a picture of a {concept}")
        items.append(Item(ShapeImage(colour, shape, jitter, size), captions, concept, f"syn{i:06d}"))
    return items
