"""The search service: a FastAPI app over one index.

Routes (all documented at /docs and /openapi.json):

    GET  /                               the web page (static/)
    GET  /docs, /redoc                   the API's documentation pages (their files served from here)
    GET  /health                         liveness + item count
    GET  /api/info                       index, model, moderation concepts, limits
    POST /api/search                     JSON query: text / base64 image / item id / embedding, filters
    POST /api/search/upload              the same with a multipart image upload
    GET  /api/items/{id}                 metadata
    GET  /api/items/{id}/image           the image (by id only: no path ever comes from a client)
    GET  /api/items/{id}/thumbnail       a JPEG thumbnail (cached in the index folder)
    POST /api/items                      add an uploaded image         (token, same origin)
    DELETE /api/items/{id}               delete an item                (token, same origin)
    POST /api/moderate                   moderation scores of an uploaded image
    POST /api/score                      CLIPScore of an uploaded image and captions
    POST /encode                         texts and images -> the model's embeddings (JSON or multipart)
    POST /knn-service, GET /indices-list, POST /metadata    clip-retrieval's back-end API

Model inference and FAISS run in sync handlers, i.e. in the server's thread pool; concurrent
queries meet in micro-batches (serve/batching.py) for the text tower and unfiltered searches,
and concurrent /encode requests for both towers.
"""

from __future__ import annotations

import io
import os
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Path as PathParam, Query as QueryParam, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import DataError
from ..eval.clip_score import clip_score
from ..images import MAX_IMAGE_PIXELS, MEDIA_TYPES, decode_image
from ..index.search import MAX_K, MAX_QUERY_CHARS, Query, Result, Searcher, open_searcher
from ..index.store import IndexedItem
from ..inference.engine import Engine, EngineConfig, Precision, resolve_precision
from .deps import DEFAULT_MAX_ENCODE_ITEMS, DEFAULT_MAX_UPLOAD_BYTES, Settings, decode_base64, get_searcher, get_settings
from .docs import add_offline_docs
from .guards import BodyLimit, check_same_origin, check_token
from .handlers import add_error_handlers
from .schemas import AddResponse, DeleteResponse, FilterModel, HealthResponse, ResultModel, ScoreResponse, SearchRequest, SearchResponse

__all__ = ["Settings", "create_app", "DEFAULT_MAX_UPLOAD_BYTES"]

ItemId = Annotated[int, PathParam(ge=0, le=2**62, description="An item id from a search result.")]
# The page loads only its own script, style and images.
_PAGE_CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'"


def create_app(
    index: str | Path, *, token: str | None = None, concepts: str | Path | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = MAX_IMAGE_PIXELS,
    cors_origins: tuple[str, ...] = (), searcher: Searcher | None = None, batch_queries: bool = True,
    max_encode_items: int = DEFAULT_MAX_ENCODE_ITEMS, precision: Precision | None = None, role: str = "single",
    forward_writes_to: str | None = None,
) -> FastAPI:  # fmt: skip
    """The app over the index at ``index`` (opened now, with its write lock; closed at shutdown).
    ``batch_queries``: concurrent queries (and /encode requests) run in micro-batches.
    ``precision``: what the engine computes queries and /encode in (default: the embedder's
    own, "auto"); "fp32" gives exactly the fp32 model's vectors on any machine.
    ``role`` (single, writer, replica) is reported by /health; ``forward_writes_to``: a replica
    sends adds and deletes to the writer listening on this unix socket (workers.py)."""
    from .batching import batch_concurrent_queries
    from .encode import install_encoders, router as encode_router
    from .knn import router as knn_router

    if precision is not None:
        resolve_precision(precision, "cpu")  # a bad name fails before the index is opened (and locked)
    searcher = searcher or open_searcher(index, concepts=concepts)
    searcher.max_pixels = max_pixels
    if precision is not None:
        embedder = searcher.embedder
        embedder.engine = Engine(embedder.model, EngineConfig(precision=precision))
    if batch_queries:
        batch_concurrent_queries(searcher)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        searcher.close()

    app = FastAPI(title="clipforge search", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Semantic image search over a clipforge index.")  # fmt: skip
    add_offline_docs(app, app.title)  # /docs and /redoc from local files, no CDN
    app.state.searcher = searcher
    app.state.settings = Settings(Path(index).resolve().name, token or None, max_upload_bytes, max_pixels, max_encode_items)
    install_encoders(app, searcher, batch_queries)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # Read-only use by other front-ends (clip-retrieval's); writes stay same-origin (guards).
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"])
    if forward_writes_to is not None:
        from .forward import ForwardWrites

        app.add_middleware(ForwardWrites, socket_path=forward_writes_to)  # inside BodyLimit: oversized bodies stop here
    if role != "single":
        from .forward import WorkerHeader

        app.add_middleware(WorkerHeader, role=role, pid=os.getpid())
    app.state.role = role
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    add_error_handlers(app)
    app.include_router(router)
    app.include_router(knn_router)
    app.include_router(encode_router)
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")
    return app


def _static_dir() -> str:
    return str(resources.files("clipforge.serve") / "static")


router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> Response:
    return FileResponse(Path(_static_dir()) / "index.html", headers={"Content-Security-Policy": _PAGE_CSP})


@router.get("/health", response_model=HealthResponse, tags=["service"])
def health(request: Request) -> HealthResponse:
    s = get_searcher(request)
    return HealthResponse(status="ok", items=s.store.count(), model=s.embedder.model_ref, worker=request.app.state.role, pid=os.getpid())


@router.get("/api/info", tags=["service"])
def info(request: Request) -> dict[str, Any]:
    s, settings = get_searcher(request), get_settings(request)
    return {
        "index": settings.index_name, **s.store.summary(), "concepts": s.moderator.names,
        "max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
        "max_k": MAX_K, "max_encode_items": settings.max_encode_items, "token_required": settings.token is not None,
        "folders": s.store.folders(),
    }  # fmt: skip


# ---- search -------------------------------------------------------------------------------
def result_model(r: Result) -> ResultModel:
    item = r.item
    return ResultModel(
        id=item.id, score=round(r.score, 6), filename=os.path.basename(item.path), folder=item.folder, caption=item.caption,
        sha256=item.sha256, size=item.size, width=item.width, height=item.height, added=item.added,
        tags=list(item.tags), moderation=r.moderation, image_url=f"/api/items/{item.id}/image",
        thumbnail_url=f"/api/items/{item.id}/thumbnail",
    )  # fmt: skip


def search_response(results: list[Result], start: float) -> Response:
    """The JSON of a SearchResponse, serialised here (pydantic's Rust encoder) rather than by
    FastAPI: for a sync endpoint FastAPI validates and encodes the returned model again in a
    second trip through the thread pool, which cost the service ~15 % of its CPU per query
    (py-spy, bench/serve_load.py --profile)."""
    took = round(1000 * (time.perf_counter() - start), 2)
    return Response(SearchResponse(results=[result_model(r) for r in results], took_ms=took).model_dump_json(), media_type="application/json")


@router.post("/api/search", response_model=SearchResponse, tags=["search"])
def search(body: SearchRequest, request: Request) -> Response:
    start = time.perf_counter()
    query = Query(
        text=body.text, image=decode_base64(body.image_base64), image_id=body.image_id,
        vector=tuple(body.embedding) if body.embedding is not None else None,
        text_weight=body.text_weight, image_weight=body.image_weight,
    )  # fmt: skip
    flt = body.filters.to_filter() if body.filters else None
    results = get_searcher(request).search(query, body.k, flt, body.hide_flagged, body.modality)
    return search_response(results, start)


def _read_upload(file: UploadFile | None) -> bytes | None:
    if file is None:
        return None
    data = file.file.read()
    if not data:
        raise DataError(f"the uploaded file {file.filename!r} is empty")
    return data


def _parse_filters(text: str | None) -> FilterModel | None:
    if not text:
        return None
    try:
        return FilterModel.model_validate_json(text)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise DataError(f"'filters' must be a JSON object like {{\"folder\": \"cats\"}}: {e}") from None


@router.post("/api/search/upload", response_model=SearchResponse, tags=["search"])
def search_upload(
    request: Request,
    file: Optional[UploadFile] = File(None, description="Query image."),
    text: Optional[str] = Form(None, max_length=MAX_QUERY_CHARS),
    k: int = Form(10, ge=1, le=MAX_K),
    text_weight: float = Form(1.0, ge=0, le=1000),
    image_weight: float = Form(1.0, ge=0, le=1000),
    filters: Optional[str] = Form(None, max_length=100_000, description="FilterModel as JSON."),
    hide_flagged: bool = Form(False),
) -> Response:
    start = time.perf_counter()
    query = Query(text=text or None, image=_read_upload(file), text_weight=text_weight, image_weight=image_weight)
    flt = _parse_filters(filters)
    results = get_searcher(request).search(query, k, flt.to_filter() if flt else None, hide_flagged)
    return search_response(results, start)


# ---- items --------------------------------------------------------------------------------
def _item(request: Request, item_id: int) -> IndexedItem:
    item = get_searcher(request).store.items([item_id]).get(item_id)
    if item is None:
        raise HTTPException(404, f"no item with id {item_id}; ids come from search results")
    return item


@router.get("/api/items/{item_id}", tags=["items"])
def item_metadata(item_id: ItemId, request: Request) -> dict[str, Any]:
    item = _item(request, item_id)
    return {**item.to_dict(), "path": None, "filename": Path(item.path).name}


@router.get("/api/items/{item_id}/image", tags=["items"])
def item_image(item_id: ItemId, request: Request) -> Response:
    path = Path(_item(request, item_id).path)  # from the index's own table, never from the client
    if not path.is_file():
        raise HTTPException(404, f"item {item_id}'s file is no longer on disk; delete the item or restore the file")
    media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return FileResponse(path, media_type=media, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"})


@router.get("/api/items/{item_id}/thumbnail", tags=["items"])
def item_thumbnail(item_id: ItemId, request: Request, size: int = QueryParam(256, ge=16, le=1024)) -> Response:
    item = _item(request, item_id)
    cache = get_searcher(request).store.root / "thumbs" / f"{item.id}_{size}.jpg"
    if not cache.is_file():
        source = Path(item.path)
        if not source.is_file():
            raise HTTPException(404, f"item {item_id}'s file is no longer on disk; delete the item or restore the file")
        _write_thumbnail(source, cache, size, get_settings(request).max_pixels)
    return FileResponse(cache, media_type="image/jpeg", headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"})


def _write_thumbnail(source: Path, dest: Path, size: int, max_pixels: int) -> None:
    image = decode_image(source.read_bytes(), max_pixels)
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, dest)  # concurrent requests may race here: each writes a whole file


@router.post("/api/items", response_model=AddResponse, status_code=201, tags=["items"])
def add_item(
    request: Request,
    file: UploadFile = File(..., description="An image file."),
    caption: Optional[str] = Form(None, max_length=MAX_QUERY_CHARS),
    tags: str = Form("", max_length=10_000, description="Comma-separated tags."),
    folder: str = Form("uploads", max_length=1024),
    near_duplicate: Optional[float] = Form(None, ge=0, le=1, description="Skip if this similar (cosine) to an item."),
) -> Response:
    check_same_origin(request)
    check_token(request, get_settings(request).token)
    tag_list = [t.strip() for t in tags.split(",") if t.strip()]
    result = get_searcher(request).add_image(_read_upload(file), file.filename or "", caption=caption, tags=tag_list,
                                             folder=folder, near_duplicate=near_duplicate)  # fmt: skip
    if result.ids:
        return JSONResponse(AddResponse(id=result.ids[0]).model_dump(), status_code=201)
    if result.duplicates:
        return JSONResponse(AddResponse(duplicate_of=next(iter(result.duplicates.values()))).model_dump(), status_code=200)
    near_id, sim = next(iter(result.near_duplicates.values()))
    return JSONResponse(AddResponse(near_duplicate_of=near_id, similarity=round(sim, 6)).model_dump(), status_code=200)


@router.delete("/api/items/{item_id}", response_model=DeleteResponse, tags=["items"])
def delete_item(item_id: ItemId, request: Request) -> DeleteResponse:
    check_same_origin(request)
    check_token(request, get_settings(request).token)
    deleted = get_searcher(request).delete([item_id])
    if not deleted:
        raise HTTPException(404, f"no item with id {item_id}; nothing was deleted")
    return DeleteResponse(deleted=deleted)


# ---- single-image tools -------------------------------------------------------------------
@router.post("/api/moderate", tags=["tools"])
def moderate(request: Request, file: UploadFile = File(...)) -> dict[str, Any]:
    """Per-concept scores (softmax mass on the concept's prompts vs its neutral prompts)."""
    return {"moderation": get_searcher(request).moderate(_read_upload(file))}


@router.post("/api/score", response_model=ScoreResponse, tags=["tools"])
def score(request: Request, file: UploadFile = File(...), captions: list[str] = Form(..., max_length=64)) -> ScoreResponse:
    """CLIPScore of the image with each caption (Hessel et al. 2021)."""
    if any(len(c) > MAX_QUERY_CHARS for c in captions):
        raise DataError(f"captions are limited to {MAX_QUERY_CHARS:,} characters")
    if not captions or any(not c.strip() for c in captions):
        raise DataError("give at least one non-empty caption to score")
    searcher = get_searcher(request)
    image = decode_image(_read_upload(file), searcher.max_pixels)
    scores = clip_score(searcher.embedder.model, [image] * len(captions), list(captions), reduce=False)
    return ScoreResponse(scores=[round(float(s), 6) for s in scores])
