"""Image files, one set of rules for every part of clipforge: which suffixes are images, how a
folder is listed, how bytes become a picture, and where a file's sidecar captions are.

Training, evaluation, ``embed``, the index and the service all read images through here, so a
file that one of them accepts, every one accepts, and it decodes to the same pixels.

Untrusted bytes (uploads, folders from anywhere) are safe to decode: the pixel count is checked
from the header before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_CAPTION_CHARS",
    "SUFFIX_BY_FORMAT",
    "MEDIA_TYPES",
    "is_image_path",
    "find_files",
    "find_images",
    "has_images",
    "list_image_files",
    "read_image_bytes",
    "decode_image",
    "open_image",
    "sidecar_captions",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# What a stored or served file is called and sent as: PIL's format -> file suffix, suffix -> media type.
SUFFIX_BY_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}  # fmt: skip
# 40 megapixels decode to ~120 MB of RGB: plenty for photos, far below what would hurt a server.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_CAPTION_CHARS = 10_000


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def find_files(root: Path, suffixes: frozenset[str] | set[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Every file under ``root`` (sub-folders too) with one of ``suffixes`` (any case), sorted:
    the one folder walk, whose order every source uses."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def find_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (sub-folders too), sorted."""
    return find_files(root)


def has_images(folder: Path) -> bool:
    return any(is_image_path(p) and p.is_file() for p in folder.rglob("*"))


def list_image_files(source: str | Path) -> tuple[list[Path], Path]:
    """A folder (recursive) or one image -> (sorted image paths, the root folders are relative to)."""
    root = Path(source)
    if root.is_dir():
        paths = find_images(root)
        if not paths:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
        return paths, root
    if root.is_file():
        return [root], root.parent
    raise DataError(f"{root} does not exist; give an image file or a folder of images")


def read_image_bytes(path: Path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """A file's bytes, refusing empty and oversized files before reading them."""
    size = path.stat().st_size
    if size == 0:
        raise DataError("empty file")
    if size > max_bytes:
        raise DataError(f"file is {size:,} bytes, over the limit of {max_bytes:,}")
    return path.read_bytes()


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Bytes -> decoded PIL image, or DataError saying why not.

    The first frame of an animation; turned upright by its EXIF orientation (as a photo viewer
    shows it); samples wider than 8 bits scaled to 8 (not clipped). Other modes (palette, alpha,
    CMYK) are left for the preprocessing's convert("RGB"), as OpenAI's and open_clip's do.
    """
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size  # read from the header: nothing decoded yet
        if width * height > max_pixels:
            raise DataError(
                f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,}; resize it first"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
        return _to_8_bit(_upright(image))
    except DataError:
        raise
    # PIL's format plugins raise many types on corrupt input (OSError, SyntaxError, ValueError,
    # struct.error, EOFError...); every one of them means the same thing to the caller.
    except Exception as e:  # noqa: BLE001
        why = "unknown format" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        # ``from e``: the training loader counts skipped samples by the underlying error's type.
        raise DataError(f"not a readable image ({why}); send a PNG, JPEG, WebP, GIF, BMP or TIFF file") from e


def _upright(image: Image.Image) -> Image.Image:
    if image.getexif().get(0x0112, 1) == 1:  # 0x0112: the EXIF orientation tag; 1 is upright
        return image
    fmt = image.format
    upright = ImageOps.exif_transpose(image)
    upright.format = fmt  # kept: the service names stored uploads by their decoded format
    return upright


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey-scale -> 8-bit "L", scaled by the range they hold."""
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    samples = np.asarray(image, dtype=np.float64)  # (H, W)
    high = float(samples.max()) if samples.size else 0.0
    if image.mode == "F":
        scale = 255.0 if high <= 1.0 else 1.0  # floats in 0-1 (the usual), else taken as 0-255
    elif image.mode.startswith("I;16"):  # known 16-bit: scaled as such, even when all dark
        scale = 1 / 256
    else:  # 32-bit integers: the range says what they hold
        scale = 1.0 if high <= 255 else (1 / 256 if high <= 65535 else 255 / high)
    out = Image.fromarray(np.clip(samples * scale, 0, 255).astype(np.uint8), "L")
    out.format = image.format
    return out


def open_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A file -> decoded PIL image, with every rule of ``read_image_bytes`` and ``decode_image``."""
    return decode_image(read_image_bytes(path), max_pixels)


def sidecar_captions(path: Path) -> tuple[str, ...]:
    """The captions of ``cat.png`` in ``cat.txt``, one per line (blank lines dropped); () without one."""
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        return ()
    text = txt.read_text(encoding="utf-8", errors="replace")[:MAX_CAPTION_CHARS]
    return tuple(line.strip() for line in text.splitlines() if line.strip())
