"""``/docs`` (Swagger UI) and ``/redoc`` that work offline: their scripts and style come from the
``fastapi-offline`` package (in the ``serve`` extra) through a static mount, not from a CDN.

Why that package: it ships Swagger UI 5 (``swagger-ui-bundle`` on PyPI ships 4.15, which refuses
the OpenAPI 3.1 documents FastAPI writes) and ReDoc 2, as plain files, and needs only FastAPI.
We use only its files; the pages are FastAPI's own ``get_swagger_ui_html`` / ``get_redoc_html``.

Both pages carry a Content-Security-Policy that lets them load and call only this service, so
nothing they do leaves it: ReDoc's sidebar otherwise fetches Redocly's logo from a CDN (the
image then fails and ReDoc leaves it out), and Swagger UI's "Try it out" can reach no other host.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

__all__ = ["add_offline_docs", "DOCS_ASSETS_URL", "docs_assets_dir"]

DOCS_ASSETS_URL = "/docs-assets"
# Swagger UI's page has one inline script (FastAPI's SwaggerUIBundle call): allowed by its hash.
_SWAGGER_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self' {hash}; "
                "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")  # fmt: skip
# ReDoc styles with injected <style> tags and runs its search in a blob: worker.
_REDOC_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
              "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")  # fmt: skip
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_MISSING = ("the API documentation pages need the package fastapi-offline (Swagger UI's and ReDoc's files): "
            "pip install 'clipforge[serve]'; /openapi.json works without it")  # fmt: skip


def docs_assets_dir() -> str | None:
    """The folder holding swagger-ui-bundle.js, swagger-ui.css and redoc.standalone.js, or None
    when fastapi-offline is not installed."""
    if importlib.util.find_spec("fastapi_offline") is None:
        return None
    return str(resources.files("fastapi_offline") / "static")


def add_offline_docs(app: FastAPI, title: str) -> None:
    """Add /docs and /redoc served from local files (the app must be made with docs_url=None and
    redoc_url=None). Without fastapi-offline both answer 503 with a sentence saying what to install."""
    assets = docs_assets_dir()
    if assets is not None:
        app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_ASSETS_URL}/{name}"

    def openapi_url(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{app.openapi_url}"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> Response:
        if assets is None:
            return JSONResponse({"detail": _MISSING}, status_code=503)
        page = get_swagger_ui_html(
            openapi_url=openapi_url(request), title=f"{title} - Swagger UI", oauth2_redirect_url=None,
            swagger_js_url=asset(request, "swagger-ui-bundle.js"), swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters={"validatorUrl": None},  # the online validator badge would call out
        )  # fmt: skip
        page.headers["Content-Security-Policy"] = _SWAGGER_CSP.format(hash=_script_hashes(bytes(page.body).decode()))
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> Response:
        if assets is None:
            return JSONResponse({"detail": _MISSING}, status_code=503)
        page = get_redoc_html(
            openapi_url=openapi_url(request), title=f"{title} - ReDoc", redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"), with_google_fonts=False,
        )  # fmt: skip
        page.headers["Content-Security-Policy"] = _REDOC_CSP
        return page


def _script_hashes(html: str) -> str:
    """CSP source expressions ('sha256-...') for each inline script of ``html``."""
    digests = (base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() for body in _INLINE_SCRIPT.findall(html))
    return " ".join(f"'sha256-{d}'" for d in digests)
