"""Dynamic int8 quantisation of an ONNX export, and what it costs in accuracy.

Dynamic quantisation stores the weights of the matrix products (every linear layer: attention
projections, MLPs, the towers' output projections) as int8 and quantises activations on the fly,
per batch: no calibration data is needed. Convolutions stay float32: onnxruntime's
ConvInteger kernel is 5x slower on CPU than its float NCHWc convolution (RN50 image tower, one
thread: 4.0 vs 20.7 img/s), so a ResNet image tower gains little (only its attention pool is
quantised). onnxruntime's quantisation pre-processing (quant_pre_process) gave no measurable
speed or accuracy change on ViT-B-32 or RN50, so it is not run.

``quantization_cost`` measures the price on inputs you choose: per-row cosine between the int8
and the float32 features, and the top-1 agreement of their zero-shot predictions.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

from ..checkpoint.io import atomic_path
from ..errors import ClipforgeError
from .onnx_common import check_onnx, prepare_out_dir, read_onnx_meta, write_meta

__all__ = ["quantize_int8", "quantization_cost", "QuantizationCost", "DEFAULT_OP_TYPES"]

DEFAULT_OP_TYPES = ("MatMul", "Gemm")


def quantize_int8(
    onnx_dir: str | Path,
    out_dir: str | Path,
    *,
    per_channel: bool = True,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
) -> dict[str, Path]:
    """Write int8 copies of the towers in ``onnx_dir`` (an ``export_onnx`` folder) to ``out_dir``.

    ``per_channel``: one scale per output column of each weight instead of one per matrix;
    it keeps the text features closer to float32 (min cosine 0.9994 vs 0.9993 on ViT-B-32) for
    about 2% of speed (measured, one thread). Returns ``{"image": path, "text": path, "meta": path}``.
    """
    meta = read_onnx_meta(onnx_dir)
    if meta.get("quantization"):
        raise ClipforgeError(f"{onnx_dir} is already quantised; quantise the float32 export instead")
    src, out = Path(onnx_dir), prepare_out_dir(out_dir)
    if out.resolve() == src.resolve():
        raise ClipforgeError("the int8 output folder must differ from the float32 one; give another out_dir")
    paths = {
        tower: _quantize_file(src / name, out / name, per_channel, op_types) for tower, name in meta["files"].items()
    }
    meta["quantization"] = {"kind": "dynamic int8", "per_channel": per_channel, "reduce_range": True,
                            "op_types": list(op_types)}  # fmt: skip
    paths["meta"] = write_meta(meta, out)
    return paths


def _quantize_file(src: Path, dst: Path, per_channel: bool, op_types: Sequence[str]) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not src.is_file():
        raise ClipforgeError(f"{src} is missing; export the model again with `clipforge export-onnx`")
    with atomic_path(dst, suffix=".onnx") as tmp, _without_preprocess_hint():
        quantize_dynamic(
            src, tmp, op_types_to_quantize=list(op_types), per_channel=per_channel,
            weight_type=QuantType.QInt8,  # signed weights: the symmetric range onnxruntime's x86 kernels expect
            # 7-bit weights: x86 CPUs without VNNI (AVX2 only) multiply u8 x s8 pairs into int16
            # and saturate with 8-bit weights (onnxruntime's quantization docs); a model made on
            # one CPU runs on others, so always. Measured on an AVX2-only EPYC, tiny ViT: image
            # cosine to fp32 0.9957 with 8-bit weights, >= 0.999 with 7-bit.
            reduce_range=True,
        )  # fmt: skip
        check_onnx(tmp, src.stem)
    return dst


class _PreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocess_hint():
    # The quantizer logs a hint to the root logger on every call; we measured the
    # pre-processing it suggests and left it out on purpose (module docstring).
    root, hint = logging.getLogger(), _PreprocessHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


class Encoder(Protocol):
    """Anything with the engine's methods: Engine, OnnxEngine."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class QuantizationCost:
    """Per-row cosine of features (1.0 = identical directions) and zero-shot top-1 agreement."""

    image_cosine_min: float | None
    image_cosine_mean: float | None
    text_cosine_min: float | None
    text_cosine_mean: float | None
    zeroshot_agreement: float | None  # fraction of images given the same class by both
    images: int
    texts: int
    classes: int

    def as_dict(self) -> dict:
        return asdict(self)


def quantization_cost(
    reference: Encoder,
    quantized: Encoder,
    *,
    images: torch.Tensor | None = None,
    texts: Sequence[str] | None = None,
    class_prompts: Sequence[str] | Sequence[Sequence[str]] | None = None,
    batch_size: int = 32,
) -> QuantizationCost:
    """Compare two encoders (usually float32 and int8 ONNX) on the inputs given.

    ``class_prompts``: one prompt per class, or a list of prompts (templates) per class whose
    features are averaged, as a zero-shot classifier does. With ``images`` it gives the top-1
    agreement; its prompts also count as texts when ``texts`` is not given.
    """
    classes = _prompt_lists(class_prompts)
    if texts is None and classes:
        texts = [p for prompts in classes for p in prompts]
    img_ref = img_q = None
    if images is not None:
        img_ref, img_q = _batched(reference, images, batch_size), _batched(quantized, images, batch_size)
    txt_ref = txt_q = None
    if texts:
        txt_ref, txt_q = reference.encode_texts(list(texts)), quantized.encode_texts(list(texts))
    agreement = None
    if classes and img_ref is not None:
        agreement = _agreement(reference, quantized, classes, img_ref, img_q)
    return QuantizationCost(
        *_cosines(img_ref, img_q), *_cosines(txt_ref, txt_q), agreement,
        images=0 if images is None else len(images), texts=len(texts or ()), classes=len(classes),
    )  # fmt: skip


def _prompt_lists(class_prompts: Sequence[str] | Sequence[Sequence[str]] | None) -> list[list[str]]:
    if not class_prompts:
        return []
    return [[p] if isinstance(p, str) else list(p) for p in class_prompts]


def _batched(encoder: Encoder, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([encoder.encode_images(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def _cosines(a: torch.Tensor | None, b: torch.Tensor | None) -> tuple[float | None, float | None]:
    if a is None or b is None or len(a) == 0:
        return None, None
    cos = F.cosine_similarity(a.double(), b.double(), dim=-1)  # (rows,)
    return float(cos.min()), float(cos.mean())


def _agreement(reference: Encoder, quantized: Encoder, classes: list[list[str]], img_ref, img_q) -> float:
    pred_ref = (img_ref @ _classifier(reference, classes).T).argmax(dim=-1)  # (images,)
    pred_q = (img_q @ _classifier(quantized, classes).T).argmax(dim=-1)
    return float((pred_ref == pred_q).double().mean())


def _classifier(encoder: Encoder, classes: list[list[str]]) -> torch.Tensor:
    """(classes, embed_dim): each class's prompt features averaged and renormalised."""
    if any(not prompts for prompts in classes):
        raise ClipforgeError("every class needs at least one prompt")
    feats = encoder.encode_texts([p for prompts in classes for p in prompts])  # (prompts, embed_dim)
    per_class = feats.split([len(prompts) for prompts in classes])
    return F.normalize(torch.stack([f.mean(dim=0) for f in per_class]), dim=-1)
