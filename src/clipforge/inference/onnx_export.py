"""Export both towers of a CLIP to ONNX, each returning L2-normalised features.

``image_encoder.onnx``: ``pixel_values`` (batch, 3, H, W) float32 -> ``image_embeds`` (batch, D).
``text_encoder.onnx``: ``input_ids`` (batch, seq) int64 -> ``text_embeds`` (batch, D), with a
dynamic sequence length: callers trim each batch to its longest end-of-text token, exactly as
``encode_text(trim_padding=True)`` does (exact under the causal mask), so short prompts don't pay
for 77 positions. ``clipforge_onnx.json`` beside them says how to feed the graphs.

Exporter: torch.onnx's dynamo exporter (torch.export). The legacy TorchScript exporter gives
equally fast graphs after onnxruntime's optimisation (measured on ViT-B-32 and RN50) and exports
3x faster, but it is deprecated since torch 2.9; it stays available as ``exporter="torchscript"``
for machines without onnxscript.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.io import atomic_path
from ..errors import ClipforgeError
from ..models.clip import CLIP
from ..transforms import OPENAI_MEAN, OPENAI_STD
from .onnx_common import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_FILE,
    META_FILE,
    TEXT_FILE,
    check_onnx,
    prepare_out_dir,
    read_onnx_meta,
    write_meta,
)

# The file names and read_onnx_meta live in onnx_common (shared with quantize and onnx_runtime);
# they stay importable from here, where callers first looked for them.
__all__ = ["export_onnx", "export_model", "read_onnx_meta", "IMAGE_FILE", "TEXT_FILE", "META_FILE", "DEFAULT_OPSET"]

# 18: the dynamo exporter's native opset (LayerNormalization, ReduceL2 with axes as input);
# onnxruntime >= 1.14 runs it on every execution provider.
DEFAULT_OPSET = 18
# A single .onnx file is one protobuf message, which cannot exceed 2 GiB.
_PROTOBUF_LIMIT = 2**31 - 2**26

Tower = Literal["image", "text"]
Exporter = Literal["dynamo", "torchscript"]


class ImageEncoder(nn.Module):
    """(batch, 3, H, W) -> (batch, embed_dim) normalised: the graph of ``image_encoder.onnx``."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(pixel_values), dim=-1)


class TextEncoder(nn.Module):
    """(batch, seq) token ids -> (batch, embed_dim) normalised. Trimming is the caller's job:
    inside a graph it would be a data-dependent shape."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(input_ids, trim_padding=False), dim=-1)


def export_onnx(
    model: CLIP,
    out_dir: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    towers: Sequence[Tower] = ("image", "text"),
    exporter: Exporter = "dynamo",
) -> dict[str, Path]:
    """Write the chosen towers as checked ONNX files plus ``clipforge_onnx.json`` into ``out_dir``.

    Returns ``{"image": path, "text": path, "meta": path}`` (only the towers asked for). Each file
    is written atomically; the caller's model is left in the mode (train/eval) it was in.
    """
    towers = _check_towers(towers)
    out_dir = prepare_out_dir(out_dir)
    model = _fp32(model)
    paths: dict[str, Path] = {}
    with _eval_mode(model):
        for tower in towers:
            paths[tower] = _export_tower(model, tower, out_dir, opset, exporter)
    paths["meta"] = _write_meta(model, out_dir, opset, exporter, towers)
    return paths


def export_model(
    name_or_path: str, out_dir: str | Path, *, int8: bool = False, opset: int = DEFAULT_OPSET
) -> dict[str, Path]:
    """What ``clipforge export-onnx`` does: load a checkpoint or model name, export both towers
    to ``out_dir`` and, with ``int8``, their dynamic int8 versions to ``out_dir/int8``."""
    from ..checkpoint import load_model

    paths = export_onnx(load_model(name_or_path), out_dir, opset=opset)
    if int8:
        from .quantize import quantize_int8

        quantized = quantize_int8(out_dir, Path(out_dir) / "int8")
        paths.update({f"int8_{k}": v for k, v in quantized.items()})
    return paths


def _check_towers(towers: Sequence[str]) -> tuple[Tower, ...]:
    unknown = sorted(set(towers) - {"image", "text"})
    if unknown or not towers:
        raise ClipforgeError(f"towers must be a non-empty subset of ('image', 'text'), got {tuple(towers)}")
    return tuple(t for t in ("image", "text") if t in towers)  # type: ignore[misc]


def _fp32(model: CLIP) -> CLIP:
    """The graphs are float32 (onnxruntime's CPU kernels and quantizer expect it): a bf16/fp16
    model is exported from a float32 copy."""
    if all(p.dtype == torch.float32 for p in model.parameters()):
        return model
    import copy

    return copy.deepcopy(model).float()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Exporters trace in eval mode (BatchNorm with running statistics) and the TorchScript one
    # restores the *wrapper's* mode afterwards, which would flip the whole model to train mode.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def _export_tower(model: CLIP, tower: Tower, out_dir: Path, opset: int, exporter: Exporter) -> Path:
    wrapper, args, names, dims = _tower_spec(model, tower)
    _check_size(wrapper, tower)
    path = out_dir / (IMAGE_FILE if tower == "image" else TEXT_FILE)
    with atomic_path(path, suffix=".onnx") as tmp:
        if exporter == "dynamo":
            _export_dynamo(wrapper.eval(), args, names, dims, tmp, opset)
        elif exporter == "torchscript":
            _export_torchscript(wrapper.eval(), args, names, dims, tmp, opset)
        else:
            raise ClipforgeError(f"unknown exporter {exporter!r}; use 'dynamo' or 'torchscript'")
        check_onnx(tmp, tower)
    return path


def _tower_spec(model: CLIP, tower: Tower) -> tuple[nn.Module, tuple[torch.Tensor], tuple[str, str], dict[int, str]]:
    """Wrapper module, example input, (input name, output name), dynamic axes of the input."""
    if tower == "image":
        size = model.image_size
        example = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 could be specialised away
        return ImageEncoder(model), (example,), ("pixel_values", "image_embeds"), {0: "batch"}
    # SOT, words, EOT (the largest id), padding: the shape of the tokenizer's output.
    n = min(8, model.context_length)
    ids = torch.arange(1, n + 1).repeat(2, 1)
    ids[:, -1] = model.vocab_size - 1
    return TextEncoder(model), (ids,), ("input_ids", "text_embeds"), {0: "batch", 1: "seq"}


def _check_size(wrapper: nn.Module, tower: str) -> None:
    nbytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    if nbytes > _PROTOBUF_LIMIT:
        raise ClipforgeError(
            f"the {tower} tower has {nbytes / 2**30:.1f} GiB of float32 weights, more than one ONNX "
            "file can hold (2 GiB); export it with onnx external data instead"
        )


def _export_dynamo(wrapper, args, names, dims, path: Path, opset: int) -> None:
    context_length = getattr(wrapper.model, "context_length", None)
    shapes = {names[0]: {axis: _dim(name, context_length) for axis, name in dims.items()}}
    with _quiet_export():
        program = torch.onnx.export(
            wrapper, args, None, input_names=[names[0]], output_names=[names[1]],
            dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False,
        )  # fmt: skip
        # One self-contained file: external data would be named after the temporary path.
        program.save(str(path), external_data=False)


def _dim(name: str, context_length: int | None) -> torch.export.Dim:
    if name == "seq":
        # At least SOT + EOT; at most the positional embedding's length.
        return torch.export.Dim("seq", min=2, max=context_length)
    return torch.export.Dim(name)


def _export_torchscript(wrapper, args, names, dims, path: Path, opset: int) -> None:
    axes = {names[0]: dims, names[1]: {0: "batch"}}
    with _quiet_export():
        torch.onnx.export(
            wrapper, args, str(path), input_names=[names[0]], output_names=[names[1]],
            dynamic_axes=axes, opset_version=opset, dynamo=False,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    # The exporters print progress lines and warn about things checked here instead: the
    # context-length test in encode_text becomes a constant (the text tower's positional
    # embedding bounds the length anyway), and the end-of-text gather never has negative indices.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _write_meta(model: CLIP, out_dir: Path, opset: int, exporter: str, towers: Sequence[str]) -> Path:
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_config": json.loads(model.config.to_json()),
        "embed_dim": model.config.embed_dim,
        "context_length": model.context_length,
        "image_size": model.image_size,
        "image_mean": list(OPENAI_MEAN),  # what clipforge.transforms normalises with
        "image_std": list(OPENAI_STD),
        "opset": opset,
        "exporter": exporter,
        "torch_version": torch.__version__,
        "files": {t: IMAGE_FILE if t == "image" else TEXT_FILE for t in towers},
        "inputs": {"image": "pixel_values", "text": "input_ids"},
        "outputs": {"image": "image_embeds", "text": "text_embeds"},
        "quantization": None,
    }
    return write_meta(meta, out_dir)
