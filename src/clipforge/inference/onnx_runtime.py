"""Run an exported CLIP (``export_onnx`` or ``quantize_int8`` output) with onnxruntime.

``OnnxEngine`` offers the inference engine's three methods (``encode_images``,
``encode_tokens``, ``encode_texts``) with the same contract: float32 torch tensors of
L2-normalised features, texts returned in the order given. Text batches are trimmed to their
longest end-of-text token before they reach the graph (its sequence axis is dynamic), and
``encode_texts`` sorts texts by token count so each batch holds texts of similar length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ClipforgeError
from ..tokenizer import tokenize
from .onnx_common import IMAGE_FILE, TEXT_FILE, read_onnx_meta

__all__ = ["OnnxEngine", "session_options"]


def session_options(threads: int | None = None):
    """CPU-tuned options: every graph optimisation (fusions, constant folding, NCHWc layout for
    convolutions) and ``threads`` intra-op threads (None: onnxruntime's default, one per
    physical core). One inter-op thread: the towers are chains, there is little to overlap."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = 0 if threads is None else int(threads)
    opts.inter_op_num_threads = 1
    return opts


class OnnxEngine:
    """``OnnxEngine(dir)`` -> ``encode_images``, ``encode_tokens``, ``encode_texts``."""

    def __init__(
        self,
        onnx_dir: str | Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        *,
        text_batch_size: int = 256,
    ) -> None:
        self.dir = Path(onnx_dir)
        self.meta = read_onnx_meta(self.dir)
        self.embed_dim = int(self.meta["embed_dim"])
        self.context_length = int(self.meta["context_length"])
        self.image_size = int(self.meta["image_size"])
        self.text_batch_size = text_batch_size
        self.providers = _check_providers(providers)
        files = self.meta.get("files", {})
        self._image = self._session(files["image"], threads) if "image" in files else None
        self._text = self._session(files["text"], threads) if "text" in files else None

    def _session(self, name: str, threads: int | None):
        import onnxruntime as ort

        path = self.dir / name
        if not path.is_file():
            raise ClipforgeError(f"{path} is missing; export the model again with `clipforge export-onnx`")
        try:
            return ort.InferenceSession(str(path), session_options(threads), providers=self.providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ClipforgeError(f"onnxruntime cannot load {path} ({e}); export the model again") from None

    def encode_images(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(batch, 3, H, W) preprocessed float images -> (batch, embed_dim) float32, normalised."""
        session = self._need(self._image, "image", IMAGE_FILE)
        x = _numpy(images, np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, self.image_size, self.image_size):
            raise ClipforgeError(
                f"expected images of shape (batch, 3, {self.image_size}, {self.image_size}), got {x.shape}; "
                "preprocess them with clipforge.create_preprocess"
            )
        if x.shape[0] == 0:
            return torch.empty(0, self.embed_dim)
        return torch.from_numpy(session.run(None, {"pixel_values": x})[0])

    def encode_tokens(self, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(batch, length) token ids -> (batch, embed_dim) float32, normalised."""
        session = self._need(self._text, "text", TEXT_FILE)
        ids = self._trimmed(_numpy(tokens, np.int64))
        if ids.shape[0] == 0:
            return torch.empty(0, self.embed_dim)
        return torch.from_numpy(session.run(None, {"input_ids": ids})[0])

    def _trimmed(self, ids: np.ndarray) -> np.ndarray:
        """Cut the padding after the batch's longest end-of-text token (the largest id), as
        ``encode_text(trim_padding=True)``: exact, since under the causal mask no kept position
        attends to a cut one."""
        if ids.ndim != 2:
            raise ClipforgeError(f"expected token ids of shape (batch, length), got {ids.shape}")
        if ids.shape[0] == 0:
            return ids
        n = int(ids.argmax(axis=1).max()) + 1
        if n > self.context_length:
            raise ClipforgeError(
                f"token ids of length {n} exceed the model's context length {self.context_length}; "
                f"tokenize with context_length={self.context_length}, truncate=True"
            )
        return np.ascontiguousarray(ids[:, :n])

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Texts -> (len(texts), embed_dim) float32, normalised, in the order given.

        Sorted by token count and batched in that order, so each batch runs only as far as its
        own longest text.
        """
        batch_size = batch_size or self.text_batch_size
        tokens = tokenize(list(texts), context_length=self.context_length, truncate=True)
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)  # by end-of-text position
        out = torch.empty(len(texts), self.embed_dim)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self.encode_tokens(tokens[rows])
        return out

    def _need(self, session, tower: str, filename: str):
        if session is None:
            raise ClipforgeError(
                f"{self.dir} has no {tower} tower ({filename}); export it with towers including {tower!r}"
            )
        return session


def _check_providers(providers: Sequence[str] | None) -> list[str]:
    import onnxruntime as ort

    if providers is None:
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing or not providers:
        raise ClipforgeError(
            f"onnxruntime execution provider(s) {missing or list(providers)} are not available here; "
            f"this onnxruntime has {', '.join(available)}"
        )
    return list(providers)


def _numpy(x: torch.Tensor | np.ndarray, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float().numpy() if dtype is np.float32 else x.numpy()
    return np.ascontiguousarray(x, dtype=dtype)
