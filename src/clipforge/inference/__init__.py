"""Fast, batched embedding of images and texts: the engine (``Engine``), in memory
(``embed_images``, ``embed_texts``) or streamed into resumable shards on disk
(``embed_collection``, over ``open_images`` / ``open_texts``; on a Ray cluster: ``embed_with_ray``,
with the ``ray`` extra); the one image-batch loop they
share (``embed_image_batches``); ONNX export (``export_onnx``), its onnxruntime runner
(``OnnxEngine``) and int8 quantisation (``quantize_int8``, ``quantization_cost``); oneDNN weight
packing for bf16 on CPUs (``pack_for_inference``, which the engine applies by itself);
``keep_freed_memory`` tunes glibc's malloc for a process that embeds (the CLI's ``embed`` and
``serve`` call it).
"""

from .allocator import keep_freed_memory
from .engine import Engine, EngineConfig, as_engine
from .image_batches import DecodedImage, ImageBatch, embed_image_batches
from .in_memory import EmbedResult, embed_images, embed_records, embed_texts, list_images
from .onnx_export import export_onnx
from .onnx_runtime import OnnxEngine
from .packed import pack_for_inference
from .quantize import quantization_cost, quantize_int8
from .ray_embed import embed_with_ray
from .reader import Collection, Record, open_images, open_texts
from .stream import EmbedSummary, embed_collection

__all__ = [
    "Collection", "DecodedImage", "EmbedResult", "EmbedSummary", "Engine", "EngineConfig", "ImageBatch",
    "OnnxEngine", "Record", "as_engine", "embed_collection", "embed_image_batches", "embed_images",
    "embed_records", "embed_texts", "embed_with_ray", "export_onnx", "keep_freed_memory", "list_images", "open_images", "open_texts",
    "pack_for_inference", "quantization_cost", "quantize_int8",
]  # fmt: skip
