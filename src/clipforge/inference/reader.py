"""Sources -> records: a collection to embed, resolved to an ordered list of small records that
say where each item's bytes are (the reader of clip-retrieval's reader / mapper / writer split).

Images: a folder (recursive), one image, a text file of image paths, or WebDataset shards (a
brace pattern ``data/{000..009}.tar``, ``a.tar::b.tar``, or a folder of ``.tar`` files). Texts: a
UTF-8 file, one text per line. The file and sample rules are ``clipforge.images``'s and
``clipforge.wds``'s, the same as training's and evaluation's.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import wds
from ..errors import DataError
from ..images import MAX_IMAGE_BYTES, has_images, is_image_path, list_image_files, read_image_bytes, sidecar_captions

__all__ = ["Record", "Collection", "open_images", "open_texts"]


@dataclass(frozen=True, slots=True)  # slots: a million records stay a few hundred MB
class Record:
    """Where one item's bytes are; small and picklable, so workers get it by value."""

    path: str  # the image file, or the tar shard holding it
    key: str | None = None  # the sample key inside a tar shard
    offset: int = -1  # byte offset of the image inside an uncompressed shard
    size: int = -1
    captions: tuple[str, ...] = ()  # a shard sample's (a file's sidecar is read with the file)
    data: bytes | None = None  # the image of a compressed shard, read while listing it

    @property
    def ref(self) -> str:
        return self.path if self.key is None else f"{self.path}/{self.key}"

    def read(self) -> tuple[bytes, tuple[str, ...]]:
        """-> (the image's bytes, its captions). Runs in a worker."""
        if self.key is None:
            path = Path(self.path)
            return read_image_bytes(path), sidecar_captions(path)
        if self.data is not None:
            return self.data, self.captions
        if self.size > MAX_IMAGE_BYTES:
            raise DataError(f"image is {self.size:,} bytes, over the limit of {MAX_IMAGE_BYTES:,}")
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size), self.captions


@dataclass
class Collection:
    """A source resolved to an ordered list of items."""

    kind: str  # "image" or "text"
    spec: str  # the source as given
    records: list[Record] = field(default_factory=list)  # images
    texts: list[str] = field(default_factory=list)  # texts
    lines: list[int] = field(default_factory=list)  # line number of each text
    fingerprint: str = ""  # identifies the items and their order, independent of the working directory
    skipped: list[dict] = field(default_factory=list)  # found while listing (index -1)

    def __len__(self) -> int:
        return len(self.records) if self.kind == "image" else len(self.texts)


def open_images(source: str | Path) -> Collection:
    """A folder (recursive), one image, a text file of image paths, or WebDataset shards."""
    spec = str(source)
    path = Path(spec)
    if wds.is_shard_pattern(spec):
        return _tar_collection(spec, wds.expand_shards(spec))
    if path.is_dir() and not has_images(path) and sorted(path.glob("*.tar")):
        return _tar_collection(spec, [str(p) for p in sorted(path.glob("*.tar"))])
    if path.is_file() and not is_image_path(path):
        return _list_collection(spec, path)
    paths, root = list_image_files(path)
    names = [p.relative_to(root).as_posix() for p in paths]
    return Collection("image", spec, [Record(str(p)) for p in paths], fingerprint=_digest(names))


def open_texts(source: str | Path) -> Collection:
    """A UTF-8 text file, one text per line; blank lines are left out (the metadata keeps each
    text's line number)."""
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a text file with one text per line")
    numbered = [(i, line.strip()) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())]
    numbered = [(i, text) for i, text in numbered if text]
    if not numbered:
        raise DataError(f"{path} has no non-empty lines; give a text file with one text per line")
    texts = [t for _, t in numbered]
    return Collection("text", str(source), texts=texts, lines=[i for i, _ in numbered], fingerprint=_digest(texts))


def _digest(names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8", errors="surrogateescape") + b"\n")
    return h.hexdigest()


def _list_collection(spec: str, listing: Path) -> Collection:
    """A text file of image paths; relative paths are relative to the list file's folder, so a
    list travels with its images."""
    lines = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{listing} lists no image paths; give one image path per line")
    records = [Record(str(listing.parent / line)) for line in lines]  # an absolute line stays absolute
    return Collection("image", spec, records, fingerprint=_digest(lines))


def _tar_collection(spec: str, urls: list[str]) -> Collection:
    collection = Collection("image", spec)
    names = []
    for url in urls:
        for record in _shard_records(url, collection.skipped):
            collection.records.append(record)
            names.append(f"{Path(url).name}/{record.key}")
    if not collection.records:
        raise DataError(f"{spec} holds no samples with an image ({', '.join(wds.IMAGE_KEYS)}); check the shards")
    collection.fingerprint = _digest(names)
    return collection


def _shard_records(url: str, skipped: list[dict]) -> list[Record]:
    """One shard's samples in file order (a damaged shard keeps the samples before the damage)."""
    records: list[Record] = []
    samples = _offset_samples(url) if url.endswith(".tar") else wds.iter_samples(url)
    try:
        for sample in samples:
            record = _record(url, sample)
            if record is None:
                skipped.append({"index": -1, "path": f"{url}/{sample['__key__']}", "reason": "sample without an image"})
            else:
                records.append(record)
    except Exception as e:  # noqa: BLE001  tarfile and webdataset raise many types on damage
        skipped.append({"index": -1, "path": url, "reason": f"shard unreadable after {len(records)} samples ({e})"})
    return records


def _record(url: str, sample: dict) -> Record | None:
    ext = wds.image_key(sample)
    if ext is None:
        return None
    captions = wds.sample_fields(sample).captions
    image = sample[ext]
    if isinstance(image, bytes):
        return Record(url, sample["__key__"], captions=captions, data=image)
    return Record(url, sample["__key__"], offset=image.offset_data, size=image.size, captions=captions)


def _offset_samples(url: str):  # noqa: ANN202  (a generator of webdataset-style samples)
    """An uncompressed shard's samples as webdataset groups them, with each image left as its
    tar member (offset and size) instead of its bytes: workers read it at its offset, so listing
    a collection of millions keeps only captions in memory. Keys follow webdataset's own rule
    (``webdataset.tariterators.base_plus_ext``); consecutive files of one key form a sample."""
    from webdataset.tariterators import base_plus_ext

    sample: dict | None = None
    with tarfile.open(url) as tar:
        for member in tar:
            key, ext = base_plus_ext(member.name) if member.isfile() else (None, None)
            if key is None:
                continue
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                sample = {"__key__": key}
            ext = ext.lower()
            if ext in wds.IMAGE_KEYS:
                sample[ext] = member
            elif ext in wds.FIELD_KEYS:  # other files (features, masks) are not needed here
                sample[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if sample is not None:
        yield sample
