"""The public API: every name in __all__ resolves, and importing is light."""

from __future__ import annotations

import subprocess
import sys

import clipforge


def test_every_public_name_resolves() -> None:
    missing = [name for name in clipforge.__all__ if not hasattr(clipforge, name)]
    assert missing == []


def test_documented_entry_points_are_public() -> None:
    for name in ["list_models", "create_model", "load", "save", "tokenize", "CLIP", "CLIPConfig"]:
        assert name in clipforge.__all__


def test_import_is_light() -> None:
    code = (
        "import sys, clipforge; "
        "heavy = [m for m in ('torch', 'faiss', 'fastapi', 'transformers') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_attribute_is_an_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError):
        clipforge.no_such_thing  # noqa: B018


def test_inference_package_exports_resolve() -> None:
    import clipforge.inference as inference

    assert [name for name in inference.__all__ if not hasattr(inference, name)] == []
