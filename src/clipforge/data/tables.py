"""CSV/TSV and JSONL sources: one row per image–caption pair.

Several captions per image may come either way, and both may be mixed:
- repeated rows naming the same image (their captions are pooled, in file order), or
- one field holding captions separated by '|' (JSONL may instead give a "captions" list).
Image paths are relative to the table's folder unless absolute. Unreadable images are not
detected here (that would read every file up front): the loader skips and counts them.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DataError
from .items import Item, PathImage, split_captions

__all__ = ["table_items", "jsonl_items"]


def table_items(path: Path, image_key: str, caption_key: str, skipped: Counter[str]) -> list[Item]:
    # TSV as written by most tools (Conceptual Captions): tabs, no quoting; a caption may
    # start with a quote character.
    tsv = path.suffix.lower() == ".tsv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        columns = reader.fieldnames or []
        if columns and (image_key not in columns or caption_key not in columns):
            raise DataError(f"{path} needs columns {image_key!r} and {caption_key!r}; it has {columns} "
                            "(set data.image_key / data.caption_key)")  # fmt: skip
        rows = [(r.get(image_key) or "", split_captions(r.get(caption_key) or "")) for r in reader]
    return _group(path.parent, rows, skipped)


def jsonl_items(path: Path, image_key: str, caption_key: str, skipped: Counter[str]) -> list[Item]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n} is not JSON ({e}); fix or remove that line") from None
        if not isinstance(row, dict):
            skipped["JSONL line is not an object"] += 1
            continue
        rows.append((str(row.get(image_key) or ""), _captions(row.get("captions", row.get(caption_key)))))
    return _group(path.parent, rows, skipped)


def _captions(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(c).strip() for c in value if str(c).strip())
    return split_captions(str(value)) if value else ()


def _group(root: Path, rows: list[tuple[str, tuple[str, ...]]], skipped: Counter[str]) -> list[Item]:
    """Rows naming the same image pool their captions: one item per image."""
    grouped: dict[str, list[str]] = {}
    for image, captions in rows:
        if not image.strip():
            skipped["row without an image path"] += 1
            continue
        grouped.setdefault(image, []).extend(captions)
    return [Item(PathImage(root / image), tuple(caps), key=image) for image, caps in grouped.items()]
