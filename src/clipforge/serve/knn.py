"""clip-retrieval's back-end API, so its Python ``ClipClient`` and its web front-end can use a
clipforge index. Shapes follow ``clip_retrieval/clip_back.py`` (KnnService, MetadataService,
IndicesList):

- ``POST /knn-service``: the body is JSON whatever its content type (clip-retrieval's client
  sends none). Response: a list of ``{"id", "similarity", "url", "caption"}``, best first; as
  in clip-back, only the first ``num_images`` carry metadata, the rest up to
  ``num_result_ids`` only ``id`` and ``similarity`` (the front-end asks /metadata for them).
- ``POST /metadata``: ``{"ids": [...]}`` -> ``[{"id", "metadata": {"url", "caption", ...}}]``.
- ``GET /indices-list``: ``[name]``, the index folder's name.

Differences, each answered with a clear 4xx rather than a silent change: ``image_url`` is
refused (the service makes no outbound requests), ``use_mclip`` is not available (no multilingual
text model), and ``modality="text"`` searches caption embeddings, in an index that holds them
(``clipforge index build --from-embeddings ... --modality text|both``). ``use_safety_model``
hides results flagged by the moderation concept "nudity", ``use_violence_detector`` those flagged by "violence" or
"gore" (when the concept file has them). Aesthetic embeddings do not exist here, so
``aesthetic_score``/``aesthetic_weight`` are ignored, as clip-back ignores them without one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ..index.search import Query, Result, Searcher
from .deps import decode_base64, get_searcher, get_settings, parse_json_body
from .schemas import KnnRequest, MetadataRequest

__all__ = ["router", "SAFETY_CONCEPTS", "VIOLENCE_CONCEPTS", "DEDUP_THRESHOLD"]

SAFETY_CONCEPTS = ("nudity",)
VIOLENCE_CONCEPTS = ("violence", "gore")
DEDUP_THRESHOLD = 0.94  # clip-back's connected_components_dedup threshold

router = APIRouter(tags=["clip-retrieval"])


def _check_index(request: Request, name: str | None) -> None:
    own = get_settings(request).index_name
    if name not in (None, "", own):
        raise HTTPException(404, f"no index named {name!r}; this service has {own!r} (see /indices-list)")


@router.get("/indices-list")
def indices_list(request: Request) -> list[str]:
    return [get_settings(request).index_name]


@router.post("/knn-service")
async def knn_service(request: Request) -> list[dict[str, Any]]:
    body: KnnRequest = await parse_json_body(request, KnnRequest)
    _check_index(request, body.indice_name)
    _check_supported(body, getattr(get_searcher(request).store, "modalities", ("image",)))  # Milvus stores: images
    base = str(request.base_url).rstrip("/")
    return await run_in_threadpool(_knn, get_searcher(request), body, base)


def _check_supported(body: KnnRequest, modalities: tuple[str, ...]) -> None:
    if body.image_url:
        raise HTTPException(422, "image_url is refused: this service makes no outbound requests; send the image base64-encoded in 'image'")
    if body.use_mclip:
        raise HTTPException(422, "use_mclip is not available: this index has no multilingual text model; set it to false")
    if body.modality not in modalities:
        raise HTTPException(422, f"modality {body.modality!r} is not available: this index holds {' and '.join(modalities)} embeddings")
    if not body.text and body.image is None and body.embedding_input is None:
        raise HTTPException(422, "give one of text, image (base64) or embedding_input")


def _query(body: KnnRequest) -> Query:
    if body.text:  # clip-back's order of precedence: text, then image, then embedding
        return Query(text=body.text)
    if body.image is not None:
        return Query(image=decode_base64(body.image))
    return Query(vector=tuple(body.embedding_input or ()))


def _knn(searcher: Searcher, body: KnnRequest, base: str) -> list[dict[str, Any]]:
    hide = [c for c in searcher.moderator.names if (body.use_safety_model and c in SAFETY_CONCEPTS)
            or (body.use_violence_detector and c in VIOLENCE_CONCEPTS)]  # fmt: skip
    wanted = max(body.num_images, body.num_result_ids or body.num_images)
    results = searcher.search(_query(body), wanted, None, hide or False, body.modality)
    if body.deduplicate:
        results = _deduplicate(searcher, results)
    out = []
    for rank, r in enumerate(results):
        row: dict[str, Any] = {"id": r.item.id, "similarity": r.score}
        if rank < body.num_images:
            row.update(_metadata(r.item, base))
        out.append(row)
    return out


def _deduplicate(searcher: Searcher, results: list[Result]) -> list[Result]:
    """Drop a result whose embedding is within DEDUP_THRESHOLD cosine of a better one kept."""
    if not results:
        return results
    vectors = searcher.store.vectors([r.item.id for r in results])  # (n, dim)
    kept: list[int] = []
    for i in range(len(results)):
        if not kept or float((vectors[kept] @ vectors[i]).max()) < DEDUP_THRESHOLD:
            kept.append(i)
    return [results[i] for i in kept]


def _metadata(item, base: str) -> dict[str, Any]:
    return {"url": f"{base}/api/items/{item.id}/image", "caption": item.caption or "", "folder": item.folder}


@router.post("/metadata")
async def metadata(request: Request) -> list[dict[str, Any]]:
    body: MetadataRequest = await parse_json_body(request, MetadataRequest)
    _check_index(request, body.indice_name)
    base = str(request.base_url).rstrip("/")
    items = get_searcher(request).store.items([i for i in body.ids if 0 <= i <= 2**62])
    return [{"id": i, "metadata": _metadata(items[i], base) if i in items else {}} for i in body.ids]

