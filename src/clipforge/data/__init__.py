"""Image–caption data for training: sources and deterministic, resumable loaders."""

from .loader import Batch, batches_per_epoch, epoch_batches, make_loader
from .sources import Item, load_items, synthetic_items

__all__ = ["Batch", "Item", "batches_per_epoch", "epoch_batches", "load_items", "make_loader", "synthetic_items"]
