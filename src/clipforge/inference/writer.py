"""The output folder of ``embed_collection`` and ``embed_with_ray``: shards, metadata, one done
marker per shard, the skipped list and the manifest (the writer of clip-retrieval's reader /
mapper / writer split).

Layout of OUT (the one clip-retrieval's inference writes, so its tools read ours)::

    img_emb/img_emb_00000.npy            (rows, embed_dim) float32 or float16, L2-normalised
    metadata/metadata_00000.parquet      one row per embedding: index, path, key, caption, ...
    done/00000.json                      shard 0 is finished: rows, skipped items, size + sha256 of both files
    manifest.json                        model, precision, source, shard size; at the end "complete", shard counts
    skipped.jsonl                        {"index", "path", "reason"} per item left out (written at the end)

(``text_emb/text_emb_*.npy`` for texts.) Shard k holds source items ``[k * shard_size, (k + 1) *
shard_size)`` whatever process writes it, so independent workers (``--shard-index``, Ray actors)
can share one OUT: each file is written to a temporary name and renamed, the marker last, and a
shard is done exactly when its marker is there, names this run's settings and its two files are
there at the recorded sizes. Whoever finds every marker present writes ``skipped.jsonl`` and the
final manifest; that is idempotent, so two workers finishing together write the same bytes.

Format 1 (a done-prefix list in the manifest, before markers) is read and turned into markers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from ..checkpoint.io import atomic_path
from ..errors import DataError

__all__ = ["FORMAT", "FORMAT_VERSION", "EmbeddingWriter"]

FORMAT = "clipforge-embeddings"
FORMAT_VERSION = 2  # 2: one done marker per shard (1: the manifest listed a done prefix)
# The manifest entries a resumed run must match exactly, and what to call each in an error.
_MUST_MATCH = {"kind": "item kind", "model_fingerprint": "model (weights)", "precision": "engine precision",
               "dtype": "output dtype", "shard_size": "shard size", "embed_dim": "embedding size",
               "source_fingerprint": "source items", "items": "number of source items"}  # fmt: skip
_OURS = ("img_emb", "text_emb", "metadata", "done", "skipped.jsonl", "manifest.json")


class EmbeddingWriter:
    """One output folder; ``open`` checks it against this run; ``finished`` says which shards are done."""

    def __init__(self, out: Path, kind: str, dtype: str) -> None:
        self.out, self.kind, self.dtype = out, kind, dtype
        self.manifest: dict = {}
        self.run_id = ""  # names the settings in every marker, so a marker of another run is never trusted

    def open(self, settings: dict, *, overwrite: bool, model: str | None, source: str, shards_total: int) -> dict:
        """Check OUT against ``settings`` (see ``_MUST_MATCH``) and write the manifest if there is
        none yet (a worker never rewrites another's) -> the manifest."""
        self.run_id = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        if overwrite:
            self._clear()
        manifest = self._read_manifest()
        if manifest is None:
            self._check_empty()
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "source": source,
                        **settings, "shards_total": shards_total, "complete": False}  # fmt: skip
            self._write_json(self.out / "manifest.json", manifest)  # before any shard: a mismatch is caught after an early kill
        else:
            self._check_same(manifest, settings)
            if manifest.get("format_version", 1) < 2:
                manifest = self._upgrade(manifest, settings, shards_total)
        self.manifest = manifest
        return manifest

    @property
    def shards_total(self) -> int:
        return self.manifest["shards_total"]

    def finished(self) -> dict[int, dict]:
        """Shard -> its marker, for every shard done (by any process)."""
        done = {}
        for path in sorted((self.out / "done").glob("*.json")):
            marker = self._read_marker(path)
            if marker is not None and self._files_match(marker):
                done[marker["shard"]] = marker
        return done

    def write_shard(self, shard: int, vectors: np.ndarray, rows: list[dict], skipped: list[dict]) -> dict:
        """Shard ``shard``: (rows, embed_dim) vectors, their metadata rows, then its marker (the
        shard counts as done only now) -> the marker. ``skipped``: {"index", "path", "reason"}."""
        with atomic_path(self.emb_path(shard), suffix=".npy") as tmp:
            np.save(tmp, vectors.astype(self.dtype, copy=False))
        emb = self._file_entry(self.emb_path(shard))  # read back from the page cache
        meta = self._write_metadata(shard, rows)
        marker = {"run": self.run_id, "shard": shard, "rows": len(rows), "skipped": skipped, "files": [emb, meta]}
        self._write_json(self.marker_path(shard), marker)
        return marker

    def finalize(self, listing_skipped: list[dict]) -> bool:
        """When every shard is done: ``skipped.jsonl`` (``listing_skipped``, the items the reader
        left out, first) and the manifest with per-shard counts and ``complete`` -> whether done."""
        done = self.finished()
        if len(done) < self.shards_total:
            return False
        markers = [done[k] for k in range(self.shards_total)]
        skipped = listing_skipped + [s for m in markers for s in m["skipped"]]
        with atomic_path(self.out / "skipped.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(s) + "\n" for s in skipped), encoding="utf-8")
        self.manifest = {**self.manifest, "format_version": FORMAT_VERSION, "complete": True,
                         "rows": sum(m["rows"] for m in markers), "skipped": len(skipped),
                         "shards": [{"rows": m["rows"], "skipped": len(m["skipped"])} for m in markers]}  # fmt: skip
        self._write_json(self.out / "manifest.json", self.manifest)
        return True

    def emb_path(self, shard: int) -> Path:
        prefix = "img" if self.kind == "image" else "text"
        return self.out / f"{prefix}_emb" / f"{prefix}_emb_{shard:05d}.npy"

    def meta_path(self, shard: int) -> Path:
        return self.out / "metadata" / f"metadata_{shard:05d}.parquet"

    def marker_path(self, shard: int) -> Path:
        return self.out / "done" / f"{shard:05d}.json"

    # ---- markers -------------------------------------------------------------------------
    def _read_marker(self, path: Path) -> dict | None:
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # not ours, or gone meanwhile: the shard is redone
        if not isinstance(marker, dict) or marker.get("run") != self.run_id or not isinstance(marker.get("shard"), int):
            return None
        return marker if path.stem == f"{marker['shard']:05d}" and 0 <= marker["shard"] < self.shards_total else None

    def _files_match(self, marker: dict) -> bool:
        """The shard's files are there at the recorded sizes (sizes, not hashes: re-hashing every
        finished shard on every resume would read the whole output again)."""
        for entry in marker["files"]:
            path = self.out / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return False
        return True

    def _file_entry(self, path: Path, data: bytes | None = None) -> dict:
        h = hashlib.sha256()
        if data is not None:
            h.update(data)
        else:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return {"file": path.relative_to(self.out).as_posix(), "bytes": path.stat().st_size, "sha256": h.hexdigest()}

    def _upgrade(self, manifest: dict, settings: dict, shards_total: int) -> dict:
        """Format 1 -> 2: a marker for each shard of the done prefix whose files are there (its
        skipped items from skipped.jsonl), then a format-2 manifest."""
        self.manifest = {**{k: v for k, v in manifest.items() if k not in ("shards", "complete")},
                         "format_version": FORMAT_VERSION, "shards_total": shards_total, "complete": False}  # fmt: skip
        skipped = self._read_skipped()
        size, items = settings["shard_size"], settings["items"]
        for shard, entry in enumerate(manifest.get("shards", [])):
            files = [self.emb_path(shard), self.meta_path(shard)]
            if not all(p.is_file() for p in files):
                break  # format 1 trusted a prefix only
            first, stop = shard * size, min((shard + 1) * size, items)
            marker = {"run": self.run_id, "shard": shard, "rows": entry["rows"],
                      "skipped": [s for s in skipped if first <= s["index"] < stop],
                      "files": [self._file_entry(p) for p in files]}  # fmt: skip
            self._write_json(self.marker_path(shard), marker)
        self._write_json(self.out / "manifest.json", self.manifest)
        return self.manifest

    def _read_skipped(self) -> list[dict]:
        path = self.out / "skipped.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # ---- the folder ----------------------------------------------------------------------
    def _read_manifest(self) -> dict | None:
        path = self.out / "manifest.json"
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise DataError(f"{path} is not valid JSON; delete the folder or pass --overwrite") from None
        if manifest.get("format") != FORMAT:
            raise DataError(f"{self.out} holds a manifest.json that clipforge embed did not write; choose another --out")
        if manifest.get("format_version", 1) > FORMAT_VERSION:
            raise DataError(f"{self.out} was written by a newer clipforge (embeddings format "
                            f"{manifest['format_version']}); upgrade clipforge or choose another --out")  # fmt: skip
        return manifest

    def _check_empty(self) -> None:
        """A new OUT must hold nothing but what a worker starting at the same time may have written
        (our folders, a temporary file)."""
        if not self.out.exists():
            return
        others = [p.name for p in self.out.iterdir() if p.name not in _OURS and not p.name.startswith(".")]
        if others:
            raise DataError(f"{self.out} is not empty and holds no clipforge embeddings; choose an empty or new "
                            "--out (or pass --overwrite to write into it)")  # fmt: skip

    def _check_same(self, manifest: dict, settings: dict) -> None:
        for key, name in _MUST_MATCH.items():
            if manifest.get(key) != settings[key]:
                hint = " (an architecture name alone means new random weights on every run)"
                raise DataError(
                    f"{self.out} holds embeddings made with another {name}{hint if key == 'model_fingerprint' else ''}: "
                    f"{manifest.get(key)!r} there, {settings[key]!r} now (source {manifest.get('source')!r}, model "
                    f"{manifest.get('model')!r}); resume with the same arguments, choose another --out, or pass "
                    "--overwrite to start again"
                )

    def _clear(self) -> None:
        """Remove what an earlier run wrote (and only that: OUT may hold the user's other files)."""
        for name in _OURS:
            path = self.out / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    # ---- files ---------------------------------------------------------------------------
    @staticmethod
    def _write_json(path: Path, value: object) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")

    def _write_metadata(self, shard: int, rows: list[dict]) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema(self.kind)
        table = pa.table({name: [r[name] for r in rows] for name in schema.names}, schema=schema)
        with atomic_path(self.meta_path(shard), suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
            data = tmp.read_bytes()  # small: a few hundred bytes a row
        return self._file_entry(self.meta_path(shard), data)


def _schema(kind: str):  # noqa: ANN202  (pyarrow is imported lazily)
    import pyarrow as pa

    if kind == "text":
        return pa.schema([("index", pa.int64()), ("text", pa.string())])
    return pa.schema([("index", pa.int64()), ("path", pa.string()), ("key", pa.string()), ("caption", pa.string()),
                      ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string())])  # fmt: skip
