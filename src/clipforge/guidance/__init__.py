"""CLIP as a guide: a differentiable objective for images (``ClipObjective``), image synthesis
by optimising a parametrisation directly (``synthesize``, ``run_guide``), and CLIPScore ranking
of candidate images (``rerank``)."""

from .objective import ClipObjective, encode_prompts, make_cutouts, score_images
from .param import PARAMETRISATIONS, FourierImage, PixelPyramid, make_parametrisation
from .rerank import RerankResult, rerank, run_rerank
from .synth import GuideResult, run_guide, synthesize

__all__ = [
    "ClipObjective", "FourierImage", "GuideResult", "PARAMETRISATIONS", "PixelPyramid", "RerankResult",
    "encode_prompts", "make_cutouts", "make_parametrisation", "rerank", "run_guide", "run_rerank",
    "score_images", "synthesize",
]  # fmt: skip
