"""What the ONNX export, its int8 quantisation and its onnxruntime runner share: the file names
of an export folder, its ``clipforge_onnx.json`` (written and read here), the output-folder
check and the ONNX validity check. Kept apart so that those three modules import this one and
not each other.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint.io import atomic_path
from ..errors import ClipforgeError

__all__ = [
    "IMAGE_FILE",
    "TEXT_FILE",
    "META_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "check_onnx",
    "prepare_out_dir",
    "write_meta",
    "read_onnx_meta",
]

IMAGE_FILE = "image_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
META_FILE = "clipforge_onnx.json"
FORMAT_NAME = "clipforge-onnx"
FORMAT_VERSION = 1


def prepare_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path, created if missing; a clear error when it is a file or cannot be made."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ClipforgeError(f"{out_dir} is a file; give a directory to write the ONNX files into")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        message = f"cannot create the output directory {out_dir} ({e.strerror}); choose another --out"
        raise ClipforgeError(message) from None
    return out_dir


def check_onnx(path: Path, tower: str) -> None:
    """Run onnx's full checker on ``path``; a ClipforgeError naming the tower when it fails."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError or InferenceError
        raise ClipforgeError(f"the exported {tower} tower is not a valid ONNX model ({e})") from None


def write_meta(meta: dict, out_dir: Path) -> Path:
    """Write ``meta`` as ``out_dir/clipforge_onnx.json``, atomically."""
    path = Path(out_dir) / META_FILE
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def read_onnx_meta(onnx_dir: str | Path) -> dict:
    """The JSON written beside the graphs; a clear error when the folder is not an export."""
    path = Path(onnx_dir) / META_FILE
    if not path.is_file():
        raise ClipforgeError(f"{onnx_dir} has no {META_FILE}; export a model with `clipforge export-onnx` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ClipforgeError(f"{path} is not readable JSON ({e}); export the model again") from None
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise ClipforgeError(
            f"{path} is not a clipforge ONNX export of format version {FORMAT_VERSION}; export the model again"
        )
    return meta
