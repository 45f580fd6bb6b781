"""Class names and prompt templates shipped as data (OpenAI's ImageNet set, and others)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

from ..errors import DataError

__all__ = ["load_templates", "load_classnames", "TEMPLATE_SETS"]

TEMPLATE_SETS = ("imagenet", "simple", "cifar", "emoji", "clipart")


@cache
def _templates_file() -> dict:
    return json.loads(resources.files("clipforge.eval.data").joinpath("templates.json").read_text())


def load_templates(name_or_path: str) -> list[str]:
    """A shipped template set by name, or a file: a JSON list, or one template per line. Every
    template must contain ``{}`` where the class name goes."""
    if name_or_path in TEMPLATE_SETS:
        return list(_templates_file()[name_or_path])
    path = Path(name_or_path)
    if not path.is_file():
        raise DataError(f"unknown template set {name_or_path!r}: give one of {', '.join(TEMPLATE_SETS)} or a file")
    text = path.read_text(encoding="utf-8")
    try:
        templates = json.loads(text)
    except json.JSONDecodeError:
        templates = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise DataError(f"{path}: templates must be a non-empty list of strings each containing '{{}}'")
    return templates


def load_classnames(name: str = "imagenet") -> list[str]:
    if name != "imagenet":
        raise DataError(f"no shipped class names for {name!r}; the shipped set is 'imagenet'")
    data = json.loads(resources.files("clipforge.eval.data").joinpath("imagenet_classnames.json").read_text())
    return list(data["classnames"])
