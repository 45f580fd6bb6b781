"""Image–caption data for training: sources and deterministic, resumable loaders.

    items = load_items("captions.csv")                        # or .jsonl, a folder, shards, synthetic:N
    loader = make_loader(items, preprocess, tokenize, 64, seed=0, epoch=0, rank=0, world_size=1)
    for images, tokens in loader: ...                         # (64, 3, H, W), (64, L)
"""

from .items import Item
from .loader import Batch, CaptionedImages, SkipCounter, Skipped, batches_per_epoch, epoch_batches, make_loader
from .sources import DataWarning, Source, load_items, open_source, synthetic_items

__all__ = [
    "Batch", "CaptionedImages", "DataWarning", "Item", "SkipCounter", "Skipped", "Source",
    "batches_per_epoch", "epoch_batches", "load_items", "make_loader", "open_source", "synthetic_items",
]  # fmt: skip
