"""The inference engine: one object that turns preprocessed images, token ids or texts into
L2-normalised float32 features as fast as the hardware allows, with the same answers as the
fp32 model (every fast path is tested against it).

Levers, each exact or within bf16 rounding:
- weights cast once to bf16 (CPUs with AVX-512 BF16 / AMX, GPUs) instead of autocast, which
  re-casts every weight on every call;
- channels-last memory format for the ResNet tower (oneDNN's fast convolution layout);
- the text tower runs only up to the longest end-of-text position of its batch (exact under the
  causal mask), and ``encode_texts`` sorts texts by token length first so each batch holds texts
  of similar length (bucketing) and none pays for the longest text of the whole request;
- bf16 on a CPU: transformer blocks on oneDNN weights packed once, with bias, GELU and residual
  add fused into the matrix products (``packed.py``);
- optional ``torch.compile`` of both towers.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from ..errors import ClipforgeError
from ..models.clip import CLIP
from ..models.modified_resnet import ModifiedResNet
from ..factory import Tokenize, create_tokenizer
from .packed import can_pack, pack_for_inference

__all__ = ["EngineConfig", "Engine", "Precision", "as_engine", "resolve_precision", "cpu_supports_bf16",
           "model_fingerprint"]  # fmt: skip

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EngineConfig:
    precision: Precision = "auto"  # auto: bf16 where the hardware computes it natively, else fp32
    device: str = "cpu"
    channels_last: bool = True  # ResNet towers only; ViTs have no convolution worth it
    compile: bool = False  # torch.compile both towers (slow first call, faster after)
    pack_weights: bool = True  # bf16 on CPU: oneDNN-packed transformer weights, fused post-ops
    text_batch_size: int = 256
    image_batch_size: int = 32


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 dot products (AVX-512 BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: Precision, device: str) -> str:
    """'auto' -> the fastest precision that keeps features within bf16 rounding of fp32."""
    if precision not in ("auto", *_DTYPES):
        raise ClipforgeError(f"unknown precision {precision!r}; use one of auto, fp32, bf16, fp16")
    if precision != "auto":
        if precision == "fp16" and torch.device(device).type == "cpu":
            raise ClipforgeError("fp16 is for GPUs; on a CPU use bf16 (or auto)")
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if kind == "cpu" and cpu_supports_bf16() else "fp32"


class Engine:
    """``Engine(model)`` -> ``encode_images``, ``encode_tokens``, ``encode_texts``.

    The engine keeps its own copy of the model in the chosen precision and memory format, so
    the caller's model is left as it was (pass ``copy_model=False`` to convert it in place and save
    the memory of a second copy; with packed weights the model is then for inference only).
    ``fingerprint`` identifies the weights the engine runs (see ``model_fingerprint``).
    """

    def __init__(self, model: CLIP, config: EngineConfig = EngineConfig(), *, copy_model: bool = True) -> None:
        self.config = config
        self.precision = resolve_precision(config.precision, config.device)
        self.dtype = _DTYPES[self.precision]
        self.device = torch.device(config.device)
        self.model = _prepare(model, self.dtype, self.device, config.channels_last, copy_model)
        # Taken before packing: packed weights are an opaque layout that says nothing stable.
        self.fingerprint = model_fingerprint(self.model)
        # torch.compile packs and fuses on its own (with freezing), so the two are not stacked.
        self.packed_modules = 0
        # Only where bf16 is native (where it is measured and tested); elsewhere bf16 stays plain.
        if config.pack_weights and not config.compile and can_pack(self.dtype, self.device) and cpu_supports_bf16():
            self.packed_modules = pack_for_inference(self.model)
        self.embed_dim = model.config.embed_dim
        self.context_length = model.context_length
        self._visual = self.model.visual
        self._text = self.model.text_features
        if config.compile:
            # freezing folds the weights into the graph, so inductor pre-packs them for oneDNN and
            # fuses bias + activation into the matmuls: the compiled path's main gain on CPU.
            options = {"freezing": True} if self.device.type == "cpu" else None
            self._visual = torch.compile(self._visual, options=options, dynamic=False)
            # Texts vary in batch and length: one graph with symbolic sizes, not one per shape.
            self._text = torch.compile(self._text, options=options, dynamic=True)

    @functools.cached_property
    def tokenize(self) -> Tokenize:
        """CLIP's BPE, or the text tower's own tokenizer (SigLIP, XLM-R): made on first use, so
        embedding images never needs a tokenizer's files."""
        return create_tokenizer(self.model.config)

    @property
    def channels_last(self) -> bool:
        return self.config.channels_last and isinstance(self.model.visual, ModifiedResNet)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) preprocessed float images -> (batch, embed_dim) float32, normalised."""
        if images.dim() != 4:
            raise ClipforgeError(f"expected images of shape (batch, 3, H, W), got {tuple(images.shape)}")
        if not self.config.compile:
            return self._images(images)
        # A compiled graph is specialised to its batch size: run batches of at most
        # image_batch_size, each padded up to a power of two, so at most log2(batch) graphs exist.
        chunks = images.split(self.config.image_batch_size)
        return torch.cat([self._images(_pad_rows(c, _next_pow2(len(c))))[: len(c)] for c in chunks])

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.normalize(self._visual(x).float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, length) token ids -> (batch, embed_dim) float32, normalised.

        The tower runs up to the batch's longest end-of-text position (exact under the causal
        mask).
        """
        if tokens.dim() != 2 or tokens.shape[1] > self.context_length:
            raise ClipforgeError(
                f"expected token ids of shape (batch, <= {self.context_length}), got {tuple(tokens.shape)}"
            )
        eot = self.model.text_pool_positions(tokens)  # (batch,): where each text is pooled
        if self.model.text_trimmable and len(tokens):  # CLIP's causal tower: exact up to the last pooled position
            tokens = tokens[:, : int(eot.max()) + 1]
        return F.normalize(self._text(tokens.to(self.device), eot.to(self.device)).float(), dim=-1).cpu()

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Texts -> (len(texts), embed_dim) float32, normalised, in the order given.

        Texts are sorted by token count and batched in that order: each batch runs the tower only
        up to its own longest text, so a few long captions don't slow the short prompts down.
        """
        batch_size = batch_size or self.config.text_batch_size
        tokens = self.tokenize(list(texts))  # (n, context_length)
        lengths = self.model.text_pool_positions(tokens)  # (n,): pooled position (end of text in CLIP)
        order = torch.argsort(lengths, stable=True)
        out = torch.empty(len(texts), self.embed_dim)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self.encode_tokens(tokens[rows])
        return out


def as_engine(model: CLIP | Engine, precision: str = "fp32", batch_size: int | None = None) -> Engine:
    """An engine as given, or one over ``model`` (on the model's device) in ``precision``, with
    ``batch_size`` for both towers if given. The model is copied, never changed."""
    if isinstance(model, Engine):
        return model
    device = str(next(model.parameters()).device)
    sizes = {} if batch_size is None else {"image_batch_size": batch_size, "text_batch_size": batch_size}
    return Engine(model, EngineConfig(precision=precision, device=device, **sizes))  # type: ignore[arg-type]


def model_fingerprint(model: CLIP, precision: str | None = None) -> str:
    """Identifies the weights cheaply: the config plus a strided sample of every tensor (hashing
    a ViT-L's 1.7 GB would cost seconds on every run). With ``precision``, the fingerprint of the
    model cast to it (an ``Engine``'s in that precision), without casting the whole model."""
    cast = _DTYPES[precision] if precision is not None else None
    h = hashlib.sha256(model.config.to_json().encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)]
            if cast is not None and sample.is_floating_point():  # as Module.to(dtype) casts
                sample = sample.to(cast)
            sample = sample.float().cpu().numpy()
            h.update(name.encode() + sample.tobytes())
    return h.hexdigest()[:16]


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad the batch dimension with zeros up to ``rows`` (rows are independent in inference)."""
    if len(x) == rows:
        return x
    return torch.cat([x, x.new_zeros(rows - len(x), *x.shape[1:])])


def _prepare(model: CLIP, dtype: torch.dtype, device: torch.device, channels_last: bool, copy_model: bool) -> CLIP:
    model = copy.deepcopy(model) if copy_model else model
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if channels_last and isinstance(model.visual, ModifiedResNet):
        model.visual.to(memory_format=torch.channels_last)
    return model
