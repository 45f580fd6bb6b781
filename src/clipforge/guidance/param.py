"""Image parametrisations: learnable tensors that render an image, so CLIP guidance can
synthesise without generator weights.

Raw pixels optimise towards high-frequency noise; both parametrisations here put most of the
optimiser's freedom in low frequencies (Mordvintsev et al. 2018, "Differentiable Image
Parameterizations", Distill):

- ``PixelPyramid``: a sum of pixel grids at sizes S, S/2, S/4 ..., each upsampled to S, through a
  sigmoid. A step on a coarse level moves a whole region at once.
- ``FourierImage``: the image's 2-D spectrum, each frequency scaled by 1/f, inverse FFT, sigmoid
  (Lucid's ``fft_image``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError

__all__ = ["PixelPyramid", "FourierImage", "PARAMETRISATIONS", "make_parametrisation"]


class PixelPyramid(nn.Module):
    """``forward() -> (1, 3, size, size)`` in [0, 1]; level k is a (3, size/2^k) grid."""

    def __init__(self, size: int, levels: int = 4, init_std: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        sides = [max(1, size >> k) for k in range(levels)]
        self.size = size
        self.levels = nn.ParameterList(
            [nn.Parameter(torch.randn(1, 3, s, s, generator=g) * init_std) for s in sides]
        )

    def forward(self) -> torch.Tensor:
        logits = sum(
            F.interpolate(level, size=(self.size, self.size), mode="bilinear", align_corners=False)
            for level in self.levels
        )  # (1, 3, size, size)
        return torch.sigmoid(logits)


class FourierImage(nn.Module):
    """``forward() -> (1, 3, size, size)`` in [0, 1], from a 1/f-scaled spectrum."""

    def __init__(self, size: int, init_std: float = 0.01, decay: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.size = size
        fy = torch.fft.fftfreq(size)[:, None]  # (size, 1)
        fx = torch.fft.rfftfreq(size)[None, :]  # (1, size // 2 + 1)
        freq = torch.sqrt(fx**2 + fy**2).clamp(min=1.0 / size)
        self.register_buffer("scale", (1.0 / freq**decay) / size)  # (size, size // 2 + 1)
        self.spectrum = nn.Parameter(torch.randn(1, 3, size, size // 2 + 1, 2, generator=g) * init_std)

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale  # (1, 3, size, size // 2 + 1)
        pixels = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")  # (1, 3, size, size)
        return torch.sigmoid(pixels * 4)  # x4: unit-scale logits give a full range of values


PARAMETRISATIONS: dict[str, Callable[..., nn.Module]] = {"pyramid": PixelPyramid, "fourier": FourierImage}


def make_parametrisation(name: str, size: int, seed: int = 0) -> nn.Module:
    if name not in PARAMETRISATIONS:
        raise DataError(f"unknown image parametrisation {name!r}; choose {' or '.join(PARAMETRISATIONS)}")
    if size < 8:
        raise DataError(f"image size {size} is too small to draw anything; give at least 8 pixels")
    return PARAMETRISATIONS[name](size, seed=seed)
