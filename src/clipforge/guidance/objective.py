"""A differentiable CLIP objective for images, for use inside any generator or sampling loop.

Pixels optimised against CLIP directly find adversarial noise: a pattern the image tower maps
near the prompt that no person would call a picture of it. The remedy of the VQGAN+CLIP and
CLIP-guided-diffusion notebooks (Crowson 2021) is to score many random *cutouts* of each image,
of random size and position, each resized to the model's input and lightly augmented (flips
and pixel noise): a feature must survive every crop and jitter to raise the score, which
noise does not.

    objective = ClipObjective(model)
    loss = objective.loss(images, "a red heart", negative_prompts=["text"])  # images in [0, 1]
    loss.backward()
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import DataError
from ..models.clip import CLIP
from ..tokenizer import tokenize
from ..transforms import OPENAI_MEAN, OPENAI_STD

__all__ = ["ClipObjective", "encode_prompts", "check_prompts", "make_cutouts", "to_model_input", "score_images"]

# Cutouts smaller than this share of the image side show too little to name (the notebooks' 0.1-0.2).
_MIN_CUT = 0.25
_NOISE = 0.05  # std of the per-cutout pixel noise, in [0, 1] pixel units (CLIP-guided diffusion's fac 0.1 of [-1, 1])


def check_prompts(prompts: str | Sequence[str], what: str = "prompt") -> list[str]:
    """A prompt or a list of prompts -> a non-empty list of non-blank strings."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise DataError(f"no {what} given; give at least one text, e.g. \"a red heart\"")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{what} {i} is empty; give a text that describes the image")
    return texts


@torch.no_grad()
def encode_prompts(model: CLIP, prompts: str | Sequence[str], truncate: bool = False) -> torch.Tensor:
    """(n, dim) normalised text embeddings. A prompt longer than the context length is an error
    (TokenizerError, saying by how much) unless ``truncate=True`` cuts it explicitly."""
    texts = check_prompts(prompts)
    device = next(model.parameters()).device
    tokens = tokenize(texts, context_length=model.context_length, truncate=truncate).to(device)
    return F.normalize(model.encode_text(tokens).float(), dim=-1)


def to_model_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """(b, 3, H, W) pixels in [0, 1] -> (b, 3, size, size) normalised as the model was trained."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = images.new_tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def make_cutouts(images: torch.Tensor, size: int, n: int, augment: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """(b, 3, H, W) in [0, 1] -> (n * b, 3, size, size) random crops, resized; cutout k of every
    image is rows k*b..(k+1)*b. Sizes are drawn with a bias to large crops (uniform**0.7)."""
    _, _, h, w = images.shape
    side = min(h, w)
    cuts = []
    for _ in range(n):
        frac = _MIN_CUT + (1 - _MIN_CUT) * float(torch.rand((), generator=generator)) ** 0.7
        c = max(1, int(side * frac))
        top = int(torch.randint(0, h - c + 1, (), generator=generator))
        left = int(torch.randint(0, w - c + 1, (), generator=generator))
        cut = images[:, :, top : top + c, left : left + c]  # (b, 3, c, c)
        cuts.append(F.interpolate(cut, size=(size, size), mode="bilinear", align_corners=False, antialias=c > size))
    out = torch.cat(cuts)  # (n * b, 3, size, size)
    return _augment(out, generator) if augment else out


def _augment(cuts: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random horizontal flips and pixel noise, per cutout."""
    m = cuts.shape[0]
    flip = torch.rand(m, generator=generator) < 0.5
    cuts = torch.where(flip.view(m, 1, 1, 1).to(cuts.device), cuts.flip(-1), cuts)
    noise = torch.randn(cuts.shape, generator=generator).to(cuts.device) * _NOISE
    return (cuts + noise).clamp(0, 1)


def _image_features(model: CLIP, pixels: torch.Tensor) -> torch.Tensor:
    """(m, 3, S, S) pixels in [0, 1] at the model's size -> (m, dim) normalised features."""
    return F.normalize(model.encode_image(to_model_input(pixels, model.image_size)).float(), dim=-1)


@torch.no_grad()
def score_images(model: CLIP, images: torch.Tensor, prompts: str | Sequence[str], truncate: bool = False) -> torch.Tensor:
    """(b,) cosine similarity of each whole image (no cutouts, no augmentation) to the mean of
    the prompts' embeddings: the number to compare before and after guidance."""
    target = F.normalize(encode_prompts(model, prompts, truncate).mean(dim=0), dim=-1)  # (dim,)
    device = next(model.parameters()).device
    return _image_features(model, images.to(device).float()) @ target


class ClipObjective:
    """``loss(images, prompts, negative_prompts=..., augment=...)``: a scalar to minimise that
    pulls every image (b, 3, H, W) in [0, 1] towards the prompts and away from the negatives.

    ``cutouts`` crops per image per call; ``negative_weight`` scales the push away. Prompt
    embeddings are cached, so calling it every step costs one image-tower pass. The model's
    weights are frozen (requires_grad off); gradients flow to the images only.
    """

    def __init__(self, model: CLIP, cutouts: int = 16, negative_weight: float = 0.5, truncate: bool = False,
                 generator: torch.Generator | None = None) -> None:  # fmt: skip
        if cutouts < 1:
            raise DataError(f"cutouts must be at least 1, got {cutouts}")
        self.model = model.eval().requires_grad_(False)
        self.cutouts = cutouts
        self.negative_weight = negative_weight
        self.truncate = truncate
        self.generator = generator
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}

    def target(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """(dim,) the normalised mean embedding of the prompts (cached)."""
        key = tuple(check_prompts(prompts))
        if key not in self._cache:
            self._cache[key] = F.normalize(encode_prompts(self.model, key, self.truncate).mean(dim=0), dim=-1)
        return self._cache[key]

    def cutout_features(self, images: torch.Tensor, augment: bool = True) -> torch.Tensor:
        """(cutouts, b, dim) normalised features of fresh random cutouts of every image."""
        _check_images(images)
        device = next(self.model.parameters()).device
        cuts = make_cutouts(images.to(device), self.model.image_size, self.cutouts, augment, self.generator)
        return _image_features(self.model, cuts).view(self.cutouts, images.shape[0], -1)

    def similarities(self, images: torch.Tensor, prompts: str | Sequence[str], augment: bool = True) -> torch.Tensor:
        """(b,) mean cosine over the cutouts of each image to the prompts' target (differentiable)."""
        return (self.cutout_features(images, augment) @ self.target(prompts)).mean(dim=0)

    def loss(self, images: torch.Tensor, prompts: str | Sequence[str],
             negative_prompts: str | Sequence[str] | None = None, augment: bool = True) -> torch.Tensor:  # fmt: skip
        """Scalar: mean over images of (1 - cos to prompts) + negative_weight * cos to negatives.
        The same cutouts serve both terms."""
        feats = self.cutout_features(images, augment)  # (cutouts, b, dim)
        loss = 1 - (feats @ self.target(prompts)).mean(dim=0)  # (b,)
        if negative_prompts:
            loss = loss + self.negative_weight * (feats @ self.target(negative_prompts)).mean(dim=0)
        return loss.mean()

    __call__ = loss


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise DataError(f"images must be a (batch, 3, height, width) tensor in [0, 1], got shape {tuple(images.shape)}")
