"""Checkpoints: clipforge's safetensors format, and OpenAI / open_clip / Hugging Face weights."""

from .io import save
from .loading import convert, detect_format, load, load_model

__all__ = ["save", "load", "load_model", "convert", "detect_format"]
