"""The output folder of ``embed_collection``: shards, metadata, the skipped list and the manifest
that makes a re-run resume (the writer of clip-retrieval's reader / mapper / writer split).

Layout of OUT (the one clip-retrieval's inference writes, so its tools read ours)::

    img_emb/img_emb_00000.npy            (rows, embed_dim) float32 or float16, L2-normalised
    metadata/metadata_00000.parquet      one row per embedding: index, path, key, caption, ...
    skipped.jsonl                        {"index", "path", "reason"} per item left out
    manifest.json                        model, precision, source, shard size, shards done

(``text_emb/text_emb_*.npy`` for texts.) Every file is written to a temporary name and renamed,
and the manifest last, so a killed run leaves either a finished shard or none.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..checkpoint.io import atomic_path
from ..errors import DataError

__all__ = ["FORMAT", "FORMAT_VERSION", "EmbeddingWriter"]

FORMAT = "clipforge-embeddings"
FORMAT_VERSION = 1
# The manifest entries a resumed run must match exactly, and what to call each in an error.
_MUST_MATCH = {"kind": "item kind", "model_fingerprint": "model (weights)", "precision": "engine precision",
               "dtype": "output dtype", "shard_size": "shard size", "embed_dim": "embedding size",
               "source_fingerprint": "source items", "items": "number of source items"}  # fmt: skip


class EmbeddingWriter:
    """One output folder; ``open`` checks it against this run and keeps its finished shards."""

    def __init__(self, out: Path, kind: str, dtype: str) -> None:
        self.out, self.kind, self.dtype = out, kind, dtype
        self.manifest: dict = {}

    def open(self, settings: dict, *, overwrite: bool, model: str | None, source: str, shards_total: int) -> dict:
        """Check OUT against ``settings`` (see ``_MUST_MATCH``), keep the shards an earlier run
        finished, and write the manifest -> manifest (``shards``: one {"rows", "skipped"} each)."""
        done = self._finished_shards(settings, overwrite)
        self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model, "source": source,
                         **settings, "shards_total": shards_total, "shards": done,
                         "complete": len(done) >= shards_total}  # fmt: skip
        self._write_json(self.out / "manifest.json", self.manifest)  # before any shard: a mismatch is caught after an early kill
        return self.manifest

    @property
    def shards_done(self) -> int:
        return len(self.manifest["shards"])

    def write_shard(self, vectors: np.ndarray, rows: list[dict], skipped_in_shard: int, all_skipped: list[dict]) -> int:
        """Shard number ``shards_done``: (rows, embed_dim) vectors and their metadata rows, then
        the skipped list, then the manifest (the shard counts as done only now) -> its number."""
        shard = self.shards_done
        with atomic_path(self.emb_path(shard), suffix=".npy") as tmp:
            np.save(tmp, vectors.astype(self.dtype, copy=False))
        self._write_metadata(shard, rows)
        with atomic_path(self.out / "skipped.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(s) + "\n" for s in all_skipped), encoding="utf-8")
        self.manifest["shards"].append({"rows": len(rows), "skipped": skipped_in_shard})
        self.manifest["complete"] = self.shards_done >= self.manifest["shards_total"]
        self._write_json(self.out / "manifest.json", self.manifest)
        return shard

    def read_skipped(self, before: int) -> list[dict]:
        """Items skipped by an earlier run in its finished shards (those before item ``before``)."""
        path = self.out / "skipped.jsonl"
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r for r in rows if 0 <= r["index"] < before]

    def emb_path(self, shard: int) -> Path:
        prefix = "img" if self.kind == "image" else "text"
        return self.out / f"{prefix}_emb" / f"{prefix}_emb_{shard:05d}.npy"

    def meta_path(self, shard: int) -> Path:
        return self.out / "metadata" / f"metadata_{shard:05d}.parquet"

    # ---- resuming ------------------------------------------------------------------------
    def _finished_shards(self, settings: dict, overwrite: bool) -> list[dict]:
        manifest = self._read_manifest()
        if overwrite:
            self._clear()
            return []
        if manifest is None:
            if self.out.exists() and any(self.out.iterdir()):
                raise DataError(f"{self.out} is not empty and holds no clipforge embeddings; choose an empty or new "
                                "--out (or pass --overwrite to write into it)")  # fmt: skip
            return []
        self._check_same(manifest, settings)
        done = manifest.get("shards", [])
        # Trust a finished shard only while its files are there (someone may have deleted one).
        n = 0
        while n < len(done) and self.emb_path(n).is_file() and self.meta_path(n).is_file():
            n += 1
        return done[:n]

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
        return manifest

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
        for name in ("img_emb", "text_emb", "metadata"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        for name in ("skipped.jsonl", "manifest.json"):
            (self.out / name).unlink(missing_ok=True)

    # ---- files ---------------------------------------------------------------------------
    @staticmethod
    def _write_json(path: Path, value: object) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")

    def _write_metadata(self, shard: int, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema(self.kind)
        table = pa.table({name: [r[name] for r in rows] for name in schema.names}, schema=schema)
        with atomic_path(self.meta_path(shard), suffix=".parquet") as tmp:
            pq.write_table(table, tmp)


def _schema(kind: str):  # noqa: ANN202  (pyarrow is imported lazily)
    import pyarrow as pa

    if kind == "text":
        return pa.schema([("index", pa.int64()), ("text", pa.string())])
    return pa.schema([("index", pa.int64()), ("path", pa.string()), ("key", pa.string()), ("caption", pa.string()),
                      ("width", pa.int32()), ("height", pa.int32()), ("sha256", pa.string())])  # fmt: skip
