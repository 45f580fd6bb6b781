"""Batched embedding of images and texts: in memory (``embed_images``, ``embed_texts``) or
streamed into resumable shards on disk (``embed_collection``)."""

from .embed import EmbedResult, embed_images, embed_texts, list_images
from .stream import EmbedSummary, embed_collection, open_images, open_texts

__all__ = [
    "EmbedResult",
    "EmbedSummary",
    "embed_collection",
    "embed_images",
    "embed_texts",
    "list_images",
    "open_images",
    "open_texts",
]
