"""Fast, batched embedding of images and texts: the engine (``Engine``), in memory
(``embed_images``, ``embed_texts``) or streamed into resumable shards on disk
(``embed_collection``); ONNX export (``export_onnx``), its onnxruntime runner (``OnnxEngine``) and
int8 quantisation (``quantize_int8``, ``quantization_cost``); oneDNN weight packing for bf16 on
CPUs (``pack_for_inference``, which the engine applies by itself); ``keep_freed_memory`` tunes
glibc's malloc for a process that embeds (the CLI's ``embed`` and ``serve`` call it).

Names load on first use: ``clipforge.index`` builds on the engine and this package's embedding
loops build on ``clipforge.index``'s image reading, so eager imports here would be circular.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "engine",
    "EngineConfig": "engine",
    "EmbedResult": "embed",
    "embed_images": "embed",
    "embed_texts": "embed",
    "list_images": "embed",
    "EmbedSummary": "stream",
    "embed_collection": "stream",
    "open_images": "stream",
    "open_texts": "stream",
    "OnnxEngine": "onnx_runtime",
    "export_onnx": "onnx_export",
    "quantize_int8": "quantize",
    "quantization_cost": "quantize",
    "pack_for_inference": "packed",
    "keep_freed_memory": "allocator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
