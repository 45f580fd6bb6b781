"""The search service (FastAPI): JSON API, clip-retrieval-compatible endpoints, an embedding
endpoint, a web page, and a client for it.

Names load lazily, so ``from clipforge.serve.client import CLIPClient`` needs only the standard
library and numpy, not the server's packages (FastAPI, uvicorn, FAISS).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "create_app": "clipforge.serve.app",
    "serve": "clipforge.serve.runner",
    "CLIPClient": "clipforge.serve.client",
    "ServiceError": "clipforge.serve.client",
    "ServiceUnreachableError": "clipforge.serve.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipforge.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
