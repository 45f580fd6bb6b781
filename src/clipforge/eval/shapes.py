"""Generated pictures of simple shapes, drawn exactly as asked: the counting and binding probes'
images. Shapes sit in distinct cells of a grid, so they never touch and can be counted."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

__all__ = ["SHAPES", "COLOURS", "Shape", "draw_shapes", "random_layout"]

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (235, 200, 0)}
_GRID = 3  # 3 x 3 cells: room for up to nine shapes


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    colour: str  # one of COLOURS
    cell: int  # 0 .. 8, row-major in the 3 x 3 grid


def random_layout(n: int, rng: random.Random, kinds: tuple[str, ...] = SHAPES,
                  colours: tuple[str, ...] = tuple(COLOURS)) -> list[Shape]:  # fmt: skip
    """``n`` shapes of random kind and colour in distinct random cells."""
    if not 1 <= n <= _GRID * _GRID:
        raise ValueError(f"between 1 and {_GRID * _GRID} shapes fit; asked for {n}")
    cells = rng.sample(range(_GRID * _GRID), n)
    return [Shape(rng.choice(kinds), rng.choice(colours), c) for c in sorted(cells)]


def _box(cell: int, size: int, jitter: tuple[float, float]) -> tuple[float, float, float, float]:
    step = size / _GRID
    r = step * 0.32  # radius: shapes fill two thirds of a cell, a clear gap to the next
    cx = (cell % _GRID + 0.5 + jitter[0]) * step
    cy = (cell // _GRID + 0.5 + jitter[1]) * step
    return (cx - r, cy - r, cx + r, cy + r)


def draw_shapes(shapes: list[Shape], size: int = 96, rng: random.Random | None = None) -> Image.Image:
    """The shapes on white, each jittered a little inside its cell."""
    rng = rng or random.Random(0)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        x0, y0, x1, y1 = _box(shape.cell, size, (rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)))
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            inset = (x1 - x0) * 0.1  # a square of the circle's area looks the same size
            draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image
