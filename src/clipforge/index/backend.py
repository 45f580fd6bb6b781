"""Which store holds an index, and the index operations for either: FAISS + SQLite (IndexStore,
the default) or Milvus (MilvusStore: `clipforge index build ... --backend milvus`).

An index folder says which it is: ``meta.sqlite`` (FAISS) or ``milvus.json`` (Milvus), so
``index add|delete|info`` and ``open_index_searcher`` take the folder alone. The FAISS operations
are build.py's, info.py's and search.py's, called unchanged; the Milvus ones are here. What runs
the model (build, search, the inference engine) is imported where it is used, so that reading an
index's info imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

from ..errors import DataError
from ..images import list_image_files
from .info import index_info
from .milvus import POINTER, MilvusStore
from .store import IndexStore

if TYPE_CHECKING:  # not at run time: `clipforge index info` imports no torch (on a FAISS folder, no FAISS either)
    from .build import BuildReport
    from .search import Searcher

__all__ = [
    "BACKENDS", "AnyStore", "backend_of", "open_store", "build_milvus_index", "build_index_with",
    "add_images_to", "delete_items_from", "index_info_of", "open_index_searcher",
]  # fmt: skip

BACKENDS = ("faiss", "milvus")
AnyStore = Union[IndexStore, MilvusStore]
Progress = Callable[[int, int], None]  # (files done, files in all)


def backend_of(index: str | Path) -> str:
    """The backend of an index folder: milvus where it holds milvus.json, else faiss (whose open
    says so when the folder holds no index at all)."""
    return "milvus" if (Path(index) / POINTER).is_file() else "faiss"


def open_store(index: str | Path, *, writable: bool = True, searchable: bool = False) -> AnyStore:
    """The store of an index folder, whichever backend holds it (IndexStore.open's arguments)."""
    cls = MilvusStore if backend_of(index) == "milvus" else IndexStore
    return cls.open(index, writable=writable, searchable=searchable)


def build_index_with(
    backend: str, source: str | Path, model: str, out: str | Path, *, milvus_uri: str | None = None,
    milvus_collection: str = "clipforge", **options: Any,
) -> BuildReport:  # fmt: skip
    """build.build_index (faiss) or build_milvus_index (milvus); ``options``: theirs."""
    if backend not in BACKENDS:
        raise DataError(f"unknown index backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "faiss":
        from .build import build_index

        if milvus_uri is not None or milvus_collection != "clipforge":
            raise DataError("--milvus-uri and --milvus-collection need --backend milvus")
        return build_index(source, model, out, **options)
    return build_milvus_index(source, model, out, uri=milvus_uri, collection=milvus_collection, **options)


def build_milvus_index(
    source: str | Path, model: str, out: str | Path, *, uri: str | None = None, collection: str = "clipforge",
    kind: str = "auto", batch_size: int = 64, workers: int = 2, near_duplicate: float | None = None,
    tags: Sequence[str] = (), progress: Progress | None = None,
) -> BuildReport:  # fmt: skip
    """Create a Milvus index folder at ``out`` (rows in Milvus at ``uri``, default Milvus Lite in
    ``out/milvus.db``) with ``model`` and add every image under ``source``."""
    from .build import add_to_store
    from .embedder import load_embedder

    embedder = load_embedder(model)
    list_image_files(source)  # fail on an empty source before creating anything
    config = embedder.model.config.to_dict()
    store = MilvusStore.create(out, model_ref=embedder.model_ref, model_config=config, uri=uri, collection=collection, kind=kind)
    with store:
        return add_to_store(store, embedder, source, batch_size, workers, near_duplicate, tags, progress)


def add_images_to(
    index: str | Path, source: str | Path, *, batch_size: int = 64, workers: int = 2,
    near_duplicate: float | None = None, tags: Sequence[str] = (), progress: Progress | None = None,
) -> BuildReport:  # fmt: skip
    """build.add_images for either backend: the images under ``source``, with the index's model."""
    from .build import add_images, add_to_store
    from .embedder import load_embedder
    from .search import check_model

    if backend_of(index) == "faiss":
        return add_images(index, source, batch_size=batch_size, workers=workers, near_duplicate=near_duplicate,
                          tags=tags, progress=progress)  # fmt: skip
    with MilvusStore.open(index) as store:
        embedder = load_embedder(store.model_ref)
        check_model(store, embedder)  # type: ignore[arg-type]  # duck-typed: model_config
        return add_to_store(store, embedder, source, batch_size, workers, near_duplicate, tags, progress)


def delete_items_from(index: str | Path, ids: Sequence[int]) -> list[int]:
    """Delete items by id from either backend -> the ids that existed."""
    from .build import delete_items

    if backend_of(index) == "faiss":
        return delete_items(index, ids)
    with MilvusStore.open(index) as store:
        return store.delete(list(ids))


def index_info_of(index: str | Path) -> dict[str, Any]:
    """`clipforge index info` for either backend, read without the write lock."""
    if backend_of(index) == "faiss":
        return index_info(index)
    with MilvusStore.open(index, writable=False) as store:
        return store.summary()


def open_index_searcher(index: str | Path, *, concepts: str | Path | None = None, writable: bool = True) -> Searcher:
    """search.open_searcher for either backend. The service takes it unchanged:
    ``serve.app.create_app(index, searcher=open_index_searcher(index))``."""
    from .embedder import load_embedder
    from .moderation import Moderator, load_concepts
    from .search import Searcher, open_searcher

    if backend_of(index) == "faiss":
        return open_searcher(index, concepts=concepts, writable=writable)
    store = MilvusStore.open(index, writable=writable)
    try:
        embedder = load_embedder(store.model_ref)
        moderator = Moderator(load_concepts(concepts), embedder.texts, float(embedder.model.scale().detach()))
        return Searcher(store, embedder, moderator)  # type: ignore[arg-type]  # IndexStore's API, duck-typed
    except BaseException:
        store.close()
        raise
