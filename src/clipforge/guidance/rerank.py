"""`clipforge rerank`: order candidate images by CLIPScore against a prompt, the way DALL·E
drew 512 samples and kept those CLIP ranked best (Ramesh et al. 2021, section 2.5).

Candidates are a folder of images (or one image) or embeddings written by ``clipforge embed``:
``--out FILE.npy`` (its ``.txt`` beside it names the rows) or one shard of ``--out FOLDER``
(``FOLDER/img_emb/img_emb_00000.npy``, named by its metadata parquet). Images that cannot
be read are skipped and counted, never fatal. CLIPScore is Hessel et al.'s ``2.5 * max(cos, 0)``;
the ranking uses the cosine itself, so candidates below zero keep their order.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint.io import atomic_path
from ..errors import DataError
from ..images import is_image_path, open_image
from ..models.clip import CLIP
from .objective import check_prompts, encode_prompts

__all__ = ["HESSEL_W", "RerankResult", "rerank", "run_rerank", "load_embedding_file", "write_sheet"]

HESSEL_W = 2.5  # Hessel et al. 2021 (CLIPScore): w = 2.5 stretches the usual cosines over 0-1


@dataclass
class RerankResult:
    prompt: str
    rows: list[dict] = field(default_factory=list)  # best first: rank, item, cosine, clip_score
    skipped: dict[str, str] = field(default_factory=dict)  # item -> why it could not be read

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "candidates": len(self.rows) + len(self.skipped), "ranked": len(self.rows),
                "skipped": len(self.skipped), "skipped_items": self.skipped, "ranking": self.rows}  # fmt: skip


def load_embedding_file(path: Path, embed_dim: int) -> tuple[np.ndarray, list[str]]:
    """A ``clipforge embed`` .npy (n, dim) -> (normalised rows, item names from the .txt beside it)."""
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable .npy array ({e}); write one with clipforge embed --out FILE.npy") from e
    if vectors.ndim != 2 or vectors.shape[1] != embed_dim:
        raise DataError(f"{path} holds an array of shape {vectors.shape}; this model's embeddings are (n, {embed_dim}): "
                        "embed the images with the same model")  # fmt: skip
    items = _row_names(path)
    if len(items) != len(vectors):
        items = [f"row {i}" for i in range(len(vectors))]
    norms = np.linalg.norm(vectors.astype(np.float32), axis=1, keepdims=True)
    return vectors.astype(np.float32) / np.maximum(norms, 1e-12), items


def _row_names(path: Path) -> list[str]:
    """What each row is: FILE.txt beside a single-file embedding, or for a shard
    OUT/img_emb/img_emb_00003.npy the ``path`` (else ``key``) column of OUT/metadata/metadata_00003.parquet."""
    names = path.with_suffix(".txt")
    if names.is_file():
        return names.read_text(encoding="utf-8").splitlines()
    shard = path.stem.rsplit("_", 1)[-1]
    meta = path.parent.parent / "metadata" / f"metadata_{shard}.parquet"
    if not meta.is_file():
        return []
    import pyarrow.parquet as pq

    table = pq.read_table(meta)
    column = "path" if "path" in table.column_names else "key" if "key" in table.column_names else None
    return [str(v) for v in table.column(column).to_pylist()] if column else []


def _embed_folder(model: CLIP, source: Path, batch_size: int) -> tuple[np.ndarray, list[str], dict[str, str]]:
    from ..factory import create_preprocess
    from ..inference.in_memory import embed_images, list_images

    result = embed_images(model, create_preprocess(model), list_images(source), batch_size=batch_size)
    return result.embeddings, result.items, result.skipped


def rerank(model: CLIP, source: str | Path, prompt: str, *, batch_size: int = 64, truncate: bool = False) -> RerankResult:
    """Every candidate in ``source``, best first, with its cosine and CLIPScore."""
    check_prompts(prompt)
    source = Path(source)
    text = encode_prompts(model, prompt, truncate)[0].cpu()  # (dim,)
    if source.suffix.lower() == ".npy":
        vectors, items = load_embedding_file(source, text.shape[0])
        skipped: dict[str, str] = {}
    else:
        vectors, items, skipped = _embed_folder(model, source, batch_size)
    if not items:
        raise DataError(f"none of the {len(skipped)} candidate(s) in {source} could be read; see the skipped list")
    cosine = torch.from_numpy(vectors).float() @ text  # (n,)
    order = cosine.argsort(descending=True).tolist()
    rows = [{"rank": r + 1, "item": items[i], "cosine": float(cosine[i]),
             "clip_score": HESSEL_W * max(float(cosine[i]), 0.0)} for r, i in enumerate(order)]  # fmt: skip
    return RerankResult(prompt, rows, skipped)


def _thumbnail(item: str, size: int = 128) -> str | None:
    """A data: URL of a small PNG of the item, when it is a readable image file."""
    path = Path(item)
    if not (is_image_path(path) and path.is_file()):
        return None
    try:
        image = open_image(path).convert("RGB")
    except DataError:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_sheet(result: RerankResult, path: Path, top: int | None = None) -> None:
    """An HTML contact sheet: the ranked candidates (thumbnails embedded) and the skipped ones."""
    cells = []
    for row in result.rows[:top]:
        thumb = _thumbnail(row["item"])
        picture = f'<img src="{thumb}" alt="">' if thumb else '<div class="none">no image</div>'
        cells.append(f'<figure>{picture}<figcaption>#{row["rank"]} CLIPScore {row["clip_score"]:.3f} '
                     f'(cos {row["cosine"]:+.3f})<br>{html.escape(Path(row["item"]).name)}</figcaption></figure>')  # fmt: skip
    skipped = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in result.skipped.items())
    page = (f"<!doctype html><meta charset=utf-8><title>rerank: {html.escape(result.prompt)}</title>"
            "<style>body{font-family:sans-serif}figure{display:inline-block;width:150px;margin:4px;"
            "vertical-align:top;font-size:12px}img,.none{width:128px;height:128px;object-fit:contain;"
            "background:#eee}</style>"
            f"<h1>{html.escape(result.prompt)}</h1><p>{len(result.rows)} ranked, {len(result.skipped)} skipped "
            "(unreadable)</p>" + "".join(cells) + (f"<h2>skipped</h2><ul>{skipped}</ul>" if skipped else ""))  # fmt: skip
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def run_rerank(source: str | Path, prompt: str, model_spec: str, out_dir: Path, *, top: int | None = None,
               batch_size: int = 64, truncate: bool = False) -> dict:  # fmt: skip
    """Load the model, rank, write OUT/rerank.json and OUT/rerank.html; returns the JSON."""
    from ..checkpoint import load

    check_prompts(prompt)
    model, _ = load(model_spec)
    result = rerank(model, source, prompt, batch_size=batch_size, truncate=truncate)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"model": model_spec, "source": str(source), **result.to_json()}
    with atomic_path(out_dir / "rerank.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    write_sheet(result, out_dir / "rerank.html", top)
    return summary
