"""Vectors that stay in ``.npy`` shards on disk (the embedding folders ``clipforge embed`` and
clip-retrieval write), read row by row with positional reads, so an index of 10M vectors needs
none of them in RAM: the compressed ANN index (compressed.py) finds candidates, these shards
re-rank them exactly.

Positional reads (``os.preadv`` into the result array), not a memory map: measured on a 1 GB
float16 shard, a memory map grows the process's RSS by ~0.5 MB for every row first touched (the
kernel maps the whole large page-cache folio around it, MADV_RANDOM or not: 1000 random rows,
+546 MiB), so re-ranking over 10 GB of shards would show as ~10 GB resident; and a first touch
costs ~7.5 us a row, a cached pread ~2.3 us. The page cache keeps hot rows either way, outside
the process.

Each shard covers a contiguous range of item ids (``first_id`` .. ``first_id + rows - 1``), so
an id finds its row with one binary search and SQLite stores no per-row location. The index
records each shard's shape, dtype and a fingerprint (a hash of its header and three rows);
``ShardSet.check`` compares them on open, so a shard deleted, truncated, or replaced by other
embeddings is named in an error instead of answering with wrong vectors.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import SearchIndexError

__all__ = ["Shard", "ShardSet", "describe_shard", "read_npy_header", "CHUNK_ROWS"]

DTYPES = ("float32", "float16")  # clip-retrieval writes float16, clipforge embed either
CHUNK_ROWS = 32_768  # rows per streamed chunk: 64 MiB of float32 at 512-d (FAISS adds a residual copy)


@dataclass(frozen=True)
class Shard:
    """One ``.npy`` file of (rows, dim) vectors, holding the vectors of ids first_id + row."""

    path: str
    first_id: int
    rows: int
    dim: int
    dtype: str
    fingerprint: str
    offset: int  # bytes before the first row (the .npy header)

    @property
    def end_id(self) -> int:
        """One past the last id."""
        return self.first_id + self.rows

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * np.dtype(self.dtype).itemsize


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """-> (shape, dtype, fortran_order, offset of the data) of a .npy file, without reading it."""
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = read(f)
            return shape, dtype, fortran, f.tell()
    except FileNotFoundError:
        raise
    except (ValueError, OSError, SyntaxError) as e:
        raise SearchIndexError(f"{path} is not a readable .npy file ({e})") from None


def describe_shard(path: str | Path, first_id: int) -> Shard:
    """A shard for the vectors in ``path``, starting at ``first_id``; SearchIndexError when the
    file is not a C-ordered 2-d float16/float32 array, or is shorter than its header says."""
    path = Path(path).resolve()
    shape, dtype, fortran, offset = read_npy_header(path)
    if len(shape) != 2 or fortran or dtype.name not in DTYPES or not dtype.isnative:
        raise SearchIndexError(f"{path} holds a {dtype} array of shape {shape}; embeddings must be (rows, dim) "
                               "float16 or float32 in C order, as np.save writes them")  # fmt: skip
    rows, dim = (int(s) for s in shape)
    shard = Shard(str(path), int(first_id), rows, dim, dtype.name, "", offset)
    _check_size(shard)
    return Shard(shard.path, shard.first_id, rows, dim, dtype.name, _fingerprint(shard), offset)


def _check_size(shard: Shard) -> None:
    size = os.stat(shard.path).st_size
    if size < shard.offset + shard.nbytes:
        raise SearchIndexError(
            f"embedding shard {shard.path} is truncated: {size:,} bytes, its header promises "
            f"{shard.offset + shard.nbytes:,} ({shard.rows:,} x {shard.dim} {shard.dtype}); re-create it "
            "(run the same `clipforge embed` again) and rebuild the index"
        )


def _fingerprint(shard: Shard) -> str:
    """The shape, dtype and first, middle and last row: enough to tell other embeddings apart."""
    digest = hashlib.sha256(f"{shard.rows},{shard.dim},{shard.dtype}".encode())
    row_bytes = shard.dim * np.dtype(shard.dtype).itemsize
    with open(shard.path, "rb") as f:
        for row in sorted({0, shard.rows // 2, max(shard.rows - 1, 0)}) if shard.rows else ():
            f.seek(shard.offset + row * row_bytes)
            digest.update(f.read(row_bytes))
    return digest.hexdigest()[:32]


class ShardSet:
    """The shards of one modality, ordered by id: lookups by id, streamed chunks, samples."""

    def __init__(self, shards: list[Shard]) -> None:
        self.shards = sorted(shards, key=lambda s: s.first_id)
        self._starts = np.array([s.first_id for s in self.shards], dtype=np.int64)
        self._ends = np.array([s.end_id for s in self.shards], dtype=np.int64)
        self._files: dict[int, int] = {}  # shard -> open descriptor

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def rows(self) -> int:
        return int(sum(s.rows for s in self.shards))

    @property
    def dim(self) -> int | None:
        return self.shards[0].dim if self.shards else None

    def check(self) -> None:
        """Every shard present, as long as recorded and holding the same vectors, or
        SearchIndexError naming the first that is not."""
        for shard in self.shards:
            try:
                now = describe_shard(shard.path, shard.first_id)
            except FileNotFoundError:
                raise SearchIndexError(
                    f"embedding shard {shard.path} is missing ({shard.rows:,} vectors of this index, ids "
                    f"{shard.first_id}..{shard.end_id - 1}); restore it, or rebuild the index from its embeddings"
                ) from None
            if (now.rows, now.dim, now.dtype, now.fingerprint) != (shard.rows, shard.dim, shard.dtype, shard.fingerprint):
                raise SearchIndexError(
                    f"embedding shard {shard.path} changed since the index was built ({now.rows:,} x {now.dim} "
                    f"{now.dtype} now, {shard.rows:,} x {shard.dim} {shard.dtype} then, or other vectors); "
                    "rebuild the index from the embeddings"
                )

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    # ---- by id ---------------------------------------------------------------------------
    def _which(self, ids: np.ndarray) -> np.ndarray:
        """(n,) shard number of each id, -1 where no shard holds it."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self.shards:
            return np.full(len(ids), -1, dtype=np.int64)
        k = np.searchsorted(self._starts, ids, side="right") - 1
        inside = (k >= 0) & (ids < self._ends[np.maximum(k, 0)])
        return np.where(inside, k, -1)

    def covers(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which ids have a row in a shard."""
        return self._which(ids) >= 0

    def ids(self) -> np.ndarray:
        """(rows,) every id the shards hold, ascending."""
        if not self.shards:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(s.first_id, s.end_id, dtype=np.int64) for s in self.shards])

    def get(self, ids: np.ndarray) -> np.ndarray:
        """(n, dim) float32 vectors of these ids (every one must be covered), in their order."""
        ids = np.asarray(ids, dtype=np.int64)
        which = self._which(ids)
        if (which < 0).any():
            raise SearchIndexError(f"no embedding shard holds ids {ids[which < 0][:10].tolist()}")
        out = np.empty((len(ids), self.dim or 0), dtype=np.float32)
        for k in np.unique(which):
            pos = np.flatnonzero(which == k)
            rows = ids[pos] - self.shards[k].first_id
            order = np.argsort(rows, kind="stable")  # ascending rows: the file is read in order
            out[pos[order]] = self._read_rows(int(k), rows[order])
        return out

    def _read_rows(self, k: int, rows: np.ndarray) -> np.ndarray:
        """(n,) ascending rows of shard k -> (n, dim) in its dtype; a run of consecutive rows is
        one read."""
        s = self.shards[k]
        row_bytes = s.dim * np.dtype(s.dtype).itemsize
        out = np.empty((len(rows), s.dim), dtype=s.dtype)
        view = memoryview(out).cast("B")
        fd = self._fd(k)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # starts of runs
        for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)]):
            want = (b - a) * row_bytes
            if os.preadv(fd, [view[a * row_bytes : b * row_bytes]], s.offset + int(rows[a]) * row_bytes) != want:
                raise SearchIndexError(f"embedding shard {s.path} ended early (truncated while in use?)")
        return out

    def _fd(self, k: int) -> int:
        """Shard k's descriptor, opened once, on first use."""
        if k not in self._files:
            self._files[k] = os.open(self.shards[k].path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self._files[k]

    # ---- streamed ------------------------------------------------------------------------
    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """-> (ids (c,), float32 vectors (c, dim)) chunks of every shard, in id order: sequential
        reads of whole chunks (the page cache keeps what it can, outside the process)."""
        for s in self.shards:
            row_bytes = s.dim * np.dtype(s.dtype).itemsize
            with open(s.path, "rb") as f:
                for start in range(0, s.rows, rows):
                    n = min(rows, s.rows - start)
                    f.seek(s.offset + start * row_bytes)
                    block = np.fromfile(f, dtype=s.dtype, count=n * s.dim).reshape(n, s.dim)
                    ids = np.arange(s.first_id + start, s.first_id + start + n, dtype=np.int64)
                    yield ids, block.astype(np.float32, copy=False)
