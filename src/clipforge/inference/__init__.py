"""Batched embedding of images and texts."""

from .embed import EmbedResult, embed_images, embed_texts, list_images

__all__ = ["EmbedResult", "embed_images", "embed_texts", "list_images"]
