"""The FAISS indexes, behind one interface (``AnnIndex``): exact inner product (``FlatIndex``)
for small collections, IVF (``IVFIndex``) beyond, and an exhaustive 4-bit PQ scan with exact
re-ranking (``PQScanIndex``, in pqfs.py) where IVF finds no structure to exploit, and IVF-PQ
codes re-ranked from vectors kept on disk (``CompressedIndex``, compressed.py). Ids are the
SQLite row ids (stable, deletable). choose.py maps kind names to these classes and picks one;
calibration.py measures how hard each must search.

Why IVF and not HNSW for large collections: FAISS's HNSW cannot remove vectors, and the index
must support ``delete`` without a rebuild; IVF removes by id and honours ``IDSelector`` filters.
HNSW also loses on unstructured data: on 100k uniform 512-d vectors (M=32) it needs efSearch
2048, ~10 ms/query, for recall@10 0.95: slower than exact search (bench/search_scale.py --explore).

The FAISS file is a cache of the vectors kept in SQLite (see store.py), so it is always
rebuildable; it is written to a temporary file, fsynced, and renamed over the old one.
"""

from __future__ import annotations

import math
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from ..errors import SearchIndexError

__all__ = ["Kind", "AnnIndex", "FlatIndex", "IVFIndex", "nlist_for", "training_sample", "id_selector"]

Kind = Literal["flat", "ivf", "pqfs", "ivfpq"]


@dataclass
class AnnIndex(ABC):
    """A FAISS IndexIDMap2 (``index``) and the effort its searches take by default.

    Subclasses say how they are made, searched and how far their effort goes; ``kind`` is the
    name the info table and the summaries store."""

    kind: ClassVar[Kind]
    exact: ClassVar[bool] = False  # every search exact: no effort to calibrate, none to widen

    index: object  # faiss.IndexIDMap2
    nprobe: int = 1  # search effort: IVF lists probed; pqfs candidates re-ranked per result

    @classmethod
    @abstractmethod
    def new(cls, dim: int, train: np.ndarray | None = None, nlist: int | None = None) -> "AnnIndex":
        """A new, empty index; ``train`` (n, dim) vectors for the kinds that learn from data."""

    @classmethod
    def from_file(cls, index: object, reader: object, nprobe: int) -> "AnnIndex":
        """The index whose IndexIDMap2 was just read; ``reader`` (a faiss IO reader) is past it."""
        return cls(index, nprobe=nprobe)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nlist(self) -> int:
        """Inverted lists; 0 for the kinds without any."""
        return 0

    @abstractmethod
    def max_effort(self, k: int) -> int:
        """The effort at which the search is exhaustive."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(q, dim) -> scores (q, k), ids (q, k); id -1 marks 'no more results'. Only ``allowed``
        ids (when given) are returned; ``nprobe`` overrides the effort for this search."""

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        import faiss

        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))))

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same folder, fsync, rename over ``path``."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as f:
                self._write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _write(self, f) -> None:
        import faiss

        faiss.write_index(self.index, faiss.PyCallbackIOWriter(f.write))

    def _search(self, queries: np.ndarray, k: int, params: object) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries, int(k), params=params)

    @classmethod
    def _training(cls, train: np.ndarray | None) -> np.ndarray:
        if train is None or len(train) == 0:
            raise SearchIndexError(f"a {cls.kind} index needs training vectors; use kind='flat' for an empty index")
        return train


class FlatIndex(AnnIndex):
    """Exact inner product with every stored vector: a few ms per query below ~50k vectors."""

    kind = "flat"
    exact = True

    @classmethod
    def new(cls, dim: int, train: np.ndarray | None = None, nlist: int | None = None) -> "FlatIndex":
        import faiss

        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    def max_effort(self, k: int) -> int:
        return 1

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        sel = id_selector(allowed)
        return self._search(queries, k, faiss.SearchParameters(sel=sel) if sel is not None else None)


class IVFIndex(AnnIndex):
    """k-means centroids over inverted lists; a search scans the ``nprobe`` lists nearest it."""

    kind = "ivf"

    @classmethod
    def new(cls, dim: int, train: np.ndarray | None = None, nlist: int | None = None) -> "IVFIndex":
        import faiss

        train = cls._training(train)
        nlist = min(nlist or nlist_for(len(train)), len(train))  # k-means needs >= 1 point per list
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = 1234  # reproducible k-means
        ivf.train(training_sample(train, nlist * 64))  # (samples, dim); 64 per centroid is plenty for k-means
        return cls(faiss.IndexIDMap2(ivf), nprobe=min(16, nlist))

    @property
    def nlist(self) -> int:
        import faiss

        return int(faiss.extract_index_ivf(self.index.index).nlist)

    def max_effort(self, k: int) -> int:
        return self.nlist  # every list probed

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params = faiss.SearchParametersIVF(sel=id_selector(allowed), nprobe=int(nprobe or self.nprobe))
        return self._search(queries, k, params)


def nlist_for(n: int) -> int:
    """~4*sqrt(n) inverted lists (FAISS's guideline), a power of two, with >= 39 training points each."""
    target = max(16, min(65536, 4 * math.isqrt(max(n, 1))))
    nlist = 1 << round(math.log2(target))
    while nlist > 16 and nlist * 39 > n:
        nlist //= 2
    return nlist


def training_sample(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most n of the (rows, dim) vectors, in their order, as contiguous float32 (reproducible)."""
    if len(vectors) <= n:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.random.default_rng(seed).choice(len(vectors), n, replace=False)
    return np.ascontiguousarray(vectors[np.sort(rows)], dtype=np.float32)


def id_selector(allowed: np.ndarray | None) -> object | None:
    """A FAISS selector of these ids, or None for all."""
    import faiss

    return None if allowed is None else faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
