"""Request and response bodies of the search service (pydantic: validated, documented in /docs)."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..index.filters import Condition, SearchFilter, parse_time
from ..index.search import MAX_K, MAX_QUERY_CHARS

__all__ = [
    "ConditionModel", "FilterModel", "SearchRequest", "ResultModel", "SearchResponse", "AddResponse",
    "DeleteResponse", "ScoreResponse", "KnnRequest", "MetadataRequest", "HealthResponse", "EncodeRequest",
    "EncodeResponse",
]  # fmt: skip

Number = Union[int, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class ConditionModel(_Strict):
    field: str = Field(description="id, path, folder, caption, sha256, size, width, height or added")
    op: Literal["=", "!=", "<", "<=", ">", ">=", "contains", "startswith", "in"]
    value: Union[Number, str, list[Union[Number, str]]]


class FilterModel(_Strict):
    folder: Optional[str] = Field(None, max_length=4096, description="Exact folder ('' is the collection root).")
    tags: list[str] = Field(default_factory=list, max_length=64, description="Items must carry every tag.")
    added_from: Optional[Union[Number, str]] = Field(None, description="Unix seconds or ISO 8601; inclusive.")
    added_to: Optional[Union[Number, str]] = Field(None, description="Unix seconds or ISO 8601; inclusive.")
    where: list[ConditionModel] = Field(default_factory=list, max_length=32)

    def to_filter(self) -> SearchFilter:
        """-> SearchFilter (raises DataError on a bad field, operator, type or date)."""
        return SearchFilter(
            folder=self.folder,
            tags=tuple(self.tags),
            added_from=parse_time(self.added_from),
            added_to=parse_time(self.added_to),
            where=tuple(Condition(c.field, c.op, c.value) for c in self.where),
        )


class SearchRequest(_Strict):
    """Any combination of text, image (base64), an indexed item and a raw embedding; the parts
    are L2-normalised, weighted, summed and re-normalised."""

    text: Optional[str] = Field(None, max_length=MAX_QUERY_CHARS)
    image_base64: Optional[str] = Field(None, description="An encoded image file, base64.")
    image_id: Optional[int] = Field(None, ge=0, description="Query with an item already in the index.")
    embedding: Optional[list[float]] = Field(None, max_length=8192)
    text_weight: float = Field(1.0, ge=0, le=1000)
    image_weight: float = Field(1.0, ge=0, le=1000)
    k: int = Field(10, ge=1, le=MAX_K)
    filters: Optional[FilterModel] = None
    hide_flagged: Union[bool, list[str]] = Field(False, description="True: hide results any concept flags; or a list of concepts.")
    modality: Optional[Literal["image", "text"]] = Field(
        None, description="Which embeddings to search in an index that holds both (built --modality both): image or text (captions); default: the index's first.")


class ResultModel(BaseModel):
    id: int
    score: float
    filename: str
    folder: str
    caption: Optional[str]
    sha256: str
    size: int
    width: int
    height: int
    added: float
    tags: list[str]
    moderation: dict[str, dict[str, Any]]
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    results: list[ResultModel]
    took_ms: float


class AddResponse(BaseModel):
    id: Optional[int] = Field(None, description="The new item's id; null when it was not added.")
    duplicate_of: Optional[int] = None
    near_duplicate_of: Optional[int] = None
    similarity: Optional[float] = None


class DeleteResponse(BaseModel):
    deleted: list[int]


class ScoreResponse(BaseModel):
    convention: str = "hessel: 2.5 * max(cos, 0)"
    scores: list[float]


class HealthResponse(BaseModel):
    status: str
    items: int
    model: str
    worker: str = "single"  # single, writer or replica (serve --workers)
    pid: int = 0


class KnnRequest(BaseModel):
    """clip-retrieval's /knn-service body (clip_retrieval/clip_back.py KnnService.post)."""

    model_config = ConfigDict(extra="ignore")  # clients of other versions send more fields

    text: Optional[str] = Field(None, max_length=MAX_QUERY_CHARS)
    image: Optional[str] = None
    image_url: Optional[str] = None
    embedding_input: Optional[list[float]] = Field(None, max_length=8192)
    modality: str = "image"
    num_images: int = Field(40, ge=1, le=MAX_K)
    num_result_ids: Optional[int] = Field(None, ge=1, le=MAX_K)
    indice_name: Optional[str] = None
    use_mclip: bool = False
    deduplicate: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    aesthetic_score: Optional[Union[int, str]] = None
    aesthetic_weight: Optional[Union[float, str]] = None


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[int] = Field(max_length=MAX_K)
    indice_name: Optional[str] = None


class EncodeRequest(_Strict):
    """Texts and images to embed (the JSON form of /encode; multipart sends the same fields)."""

    texts: list[str] = Field(default_factory=list, description="Texts, each at most 10,000 characters; "
                             "longer than the model's context length in tokens: truncated (see 'truncated').")  # fmt: skip
    images: list[str] = Field(default_factory=list, description="Encoded image files, base64 (a data: URL too), "
                              "as clip-retrieval's knn-service 'image' field.")  # fmt: skip


class EncodeResponse(BaseModel):
    model: str = Field(description="The model's name (a checkpoint's file name).")
    dim: int = Field(description="Length of every vector.")
    precision: str = Field(description="What the engine computed in: fp32, or bf16/fp16 (within their rounding of fp32).")
    context_length: int = Field(description="Tokens the text tower reads; longer texts are truncated.")
    texts: list[list[float]] = Field(description="One L2-normalised vector per text, in the order given.")
    images: list[list[float]] = Field(description="One L2-normalised vector per image, in the order given.")
    truncated: list[int] = Field(description="Indices into 'texts' of those cut to the context length.")
    took_ms: float
