"""A folder of precomputed embeddings, as ``clipforge embed`` writes it (inference/writer.py) or
clip-retrieval's inference does, read for ``clipforge index build --from-embeddings``::

    img_emb/img_emb_{i}.npy          (rows, dim) float16/float32 image embeddings
    text_emb/text_emb_{i}.npy        caption embeddings of the same rows (clip-retrieval), or
                                     ours of a text file
    metadata/metadata_{i}.parquet    one row per embedding: ours (path, key, caption, width,
                                     height, sha256; or index, text), clip-retrieval's
                                     (image_path, caption, url, ...)
    manifest.json                    ours only: model, precision, shards done

Shard i's files hold the same rows in the same order; ``i`` is zero-padded (ours) or not
(clip-retrieval's), and shards are taken in its numeric order.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import SearchIndexError
from .metadata import MODALITIES
from .shards import read_npy_header

__all__ = ["EmbeddingShard", "EmbeddingFolder", "open_embeddings", "metadata_rows", "ItemRow", "MODALITY_CHOICES"]

MODALITY_CHOICES = ("auto", "image", "text", "both")
_FOLDERS = {"image": "img_emb", "text": "text_emb"}
_NAME = re.compile(r"^(?:img|text)_emb_(\d+)\.npy$")
_META = re.compile(r"^metadata_(\d+)\.parquet$")
_OURS = "clipforge-embeddings"  # writer.FORMAT (the index layer may not import inference's writer)
# A metadata row as the items table stores it: path, folder, caption, sha256, size, width, height, url
ItemRow = tuple[str, str, "str | None", "str | None", int, int, int, "str | None"]


@dataclass(frozen=True)
class EmbeddingShard:
    number: int
    vectors: dict[str, Path]  # modality -> .npy file
    metadata: Path | None  # None: the folder has no metadata at all
    rows: int


@dataclass
class EmbeddingFolder:
    root: Path
    layout: str  # "clipforge" or "clip-retrieval"
    modalities: tuple[str, ...]
    shards: list[EmbeddingShard]
    dim: int
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def model(self) -> str | None:
        """The model our manifest names (clip-retrieval's folders name none)."""
        return self.manifest.get("model") or None


def open_embeddings(path: str | Path, modality: str = "auto") -> EmbeddingFolder:
    """Check and list an embedding folder; ``modality``: auto (whatever it holds), image, text or
    both. SearchIndexError, naming the file, for anything that would make a wrong index."""
    root = Path(path)
    if not root.is_dir():
        raise SearchIndexError(f"{root} is not a folder of embeddings (img_emb/, text_emb/, metadata/)")
    if modality not in MODALITY_CHOICES:
        raise SearchIndexError(f"unknown modality {modality!r}; choose {', '.join(MODALITY_CHOICES)}")
    manifest = _manifest(root)
    _check_finished(root, manifest)
    found = {m: _numbered(root / _FOLDERS[m], _NAME) for m in MODALITIES}
    present = tuple(m for m in MODALITIES if found[m])
    if not present:
        raise SearchIndexError(f"{root} holds no embeddings: expected img_emb/img_emb_0.npy or text_emb/text_emb_0.npy "
                               "(the output of `clipforge embed` or clip-retrieval's inference)")  # fmt: skip
    wanted = present if modality == "auto" else MODALITIES if modality == "both" else (modality,)
    lacking = [m for m in wanted if m not in present]
    if lacking:
        raise SearchIndexError(f"{root} holds no {' or '.join(lacking)} embeddings ({_FOLDERS[lacking[0]]}/ is missing "
                               f"or empty); it holds {' and '.join(present)} embeddings")  # fmt: skip
    metadata = _numbered(root / "metadata", _META)
    shards, dim = _pair(root, {m: found[m] for m in wanted}, metadata)
    folder = EmbeddingFolder(root.resolve(), "clipforge" if manifest else "clip-retrieval", wanted, shards, dim, manifest)
    _check_manifest(folder)
    return folder


def _manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise SearchIndexError(f"{path} is not valid JSON; re-run `clipforge embed` into this folder") from None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == _OURS else {}


def _numbered(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        match = pattern.match(p.name)
        if match:
            number = int(match.group(1))
            if number in out:
                raise SearchIndexError(f"{folder} holds two files numbered {number}: {out[number].name} and {p.name}")
            out[number] = p
    return out


def _pair(root: Path, vectors: dict[str, dict[int, Path]], metadata: dict[int, Path]) -> tuple[list[EmbeddingShard], int]:
    """Shards by number, each modality's file and the metadata file of the same number."""
    numbers = sorted(set().union(*(v.keys() for v in vectors.values())))
    shards, dims = [], set()
    for n in numbers:
        files = {m: v.get(n) for m, v in vectors.items()}
        lacking = [m for m, f in files.items() if f is None]
        if lacking:
            have = next(f for f in files.values() if f is not None)
            raise SearchIndexError(f"{have} has no {lacking[0]} counterpart ({_FOLDERS[lacking[0]]}/..._{n}.npy); "
                                   "the rows of every modality must come in matching shards")  # fmt: skip
        if metadata and n not in metadata:
            raise SearchIndexError(f"{next(iter(files.values()))} has no metadata/metadata_{n}.parquet; "
                                   "the shard is unfinished (re-run the embedding) or the file was removed")  # fmt: skip
        rows = {}
        for m, f in files.items():
            shape, dtype, _, _ = read_npy_header(f)
            if len(shape) != 2:
                raise SearchIndexError(f"{f} holds an array of shape {shape}; embeddings must be (rows, dim)")
            rows[m] = int(shape[0])
            dims.add(int(shape[1]))
        if len(set(rows.values())) > 1:
            raise SearchIndexError(f"shard {n} of {root} has {rows} rows: image and text embeddings must align row by row")
        shards.append(EmbeddingShard(n, files, metadata.get(n), next(iter(rows.values()))))  # type: ignore[arg-type]
    if len(dims) > 1:
        raise SearchIndexError(f"{root} mixes embedding sizes {sorted(dims)}; one index holds one model's embeddings")
    return shards, dims.pop()


def _check_finished(root: Path, manifest: dict[str, Any]) -> None:
    """Ours says whether the run finished (``complete``, written once every shard's done marker
    is there); an index of part of a collection is refused."""
    if manifest and manifest.get("complete") is False:
        markers = root / "done"
        done = len(list(markers.glob("*.json"))) if markers.is_dir() else len(manifest.get("shards", []))
        raise SearchIndexError(f"{root} holds an unfinished `clipforge embed` run ({done} of "
                               f"{manifest.get('shards_total', '?')} shards); run the same command again to finish it, "
                               "then build the index")  # fmt: skip


def _check_manifest(folder: EmbeddingFolder) -> None:
    m = folder.manifest
    if m and m.get("embed_dim") not in (None, folder.dim):
        raise SearchIndexError(f"{folder.root}'s manifest says {m['embed_dim']}-d embeddings, its shards hold {folder.dim}-d")


def metadata_rows(folder: EmbeddingFolder, shard: EmbeddingShard) -> Iterator[ItemRow]:
    """The items of one shard, in row order: ours or clip-retrieval's columns mapped to the
    items table (unknown: '' path, None caption/url/sha256, 0 size/width/height)."""
    if shard.metadata is None:
        yield from (("", "", None, None, 0, 0, 0, None) for _ in range(shard.rows))
        return
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(shard.metadata)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise SearchIndexError(f"{shard.metadata} is not a readable parquet file ({e})") from None
    if table.metadata.num_rows != shard.rows:
        raise SearchIndexError(f"{shard.metadata} has {table.metadata.num_rows:,} rows, its embeddings "
                               f"{shard.rows:,}: they must match row for row")  # fmt: skip
    columns = set(table.schema_arrow.names)
    source = _source_root(folder)
    for batch in table.iter_batches(batch_size=65_536, columns=[c for c in _COLUMNS if c in columns]):
        values = batch.to_pydict()
        n = batch.num_rows
        get = lambda *names: next((values[c] for c in names if c in values), [None] * n)  # noqa: E731
        paths, urls = get("path", "image_path"), get("url")
        captions, hashes = get("caption", "text"), get("sha256")
        widths, heights = get("width"), get("height")
        for i in range(n):
            path = _absolute(paths[i], source) or urls[i] or ""
            yield (path, _folder(path, source), captions[i], hashes[i] or None, _size(path, source),
                   int(widths[i] or 0), int(heights[i] or 0), urls[i])  # fmt: skip


_COLUMNS = ("path", "image_path", "url", "caption", "text", "sha256", "width", "height")


def _source_root(folder: EmbeddingFolder) -> Path | None:
    """Our manifest's image folder, when it is one: folders are relative to it and sizes read
    from the files (as ``index build`` from images stores them)."""
    source = folder.manifest.get("source")
    if folder.manifest.get("kind") != "image" or not source:
        return None
    path = Path(source)
    return path if path.is_dir() else None


def _absolute(path: str | None, source: Path | None) -> str | None:
    """Our image paths as ``index build`` stores them: resolved, when the file is there."""
    if source is None or not path or not os.path.exists(path):
        return path
    return str(Path(path).resolve())


def _folder(path: str, source: Path | None) -> str:
    if source is None or not path:
        return ""
    try:
        folder = Path(path).parent.relative_to(source).as_posix()
    except ValueError:
        try:
            folder = Path(path).resolve().parent.relative_to(source.resolve()).as_posix()
        except ValueError:
            return ""
    return "" if folder == "." else folder


def _size(path: str, source: Path | None) -> int:
    if source is None or not path:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
