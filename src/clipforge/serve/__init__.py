"""The search service (FastAPI): JSON API, clip-retrieval-compatible endpoints and a web page."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
