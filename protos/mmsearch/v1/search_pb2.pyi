from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class RerankOptions(_message.Message):
    __slots__ = ("model", "depth")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    depth: int
    def __init__(self, model: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "text", "image", "vector", "item_id", "top_k", "filter", "rerank", "include_metadata", "include_caption", "include_vector", "nprobe", "ef_search", "rerank_text", "caption_model", "min_score", "min_rerank_probability", "include_regions", "ask", "ask_model", "offset", "local_only", "allow_partial", "keywords")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METADATA_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CAPTION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTOR_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    RERANK_TEXT_FIELD_NUMBER: _ClassVar[int]
    CAPTION_MODEL_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MIN_RERANK_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REGIONS_FIELD_NUMBER: _ClassVar[int]
    ASK_FIELD_NUMBER: _ClassVar[int]
    ASK_MODEL_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    text: str
    image: bytes
    vector: Vector
    item_id: int
    top_k: int
    filter: str
    rerank: RerankOptions
    include_metadata: bool
    include_caption: bool
    include_vector: bool
    nprobe: int
    ef_search: int
    rerank_text: str
    caption_model: str
    min_score: float
    min_rerank_probability: float
    include_regions: bool
    ask: str
    ask_model: str
    offset: int
    local_only: bool
    allow_partial: bool
    keywords: str
    def __init__(self, collection: _Optional[str] = ..., text: _Optional[str] = ..., image: _Optional[bytes] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., item_id: _Optional[int] = ..., top_k: _Optional[int] = ..., filter: _Optional[str] = ..., rerank: _Optional[_Union[RerankOptions, _Mapping]] = ..., include_metadata: _Optional[bool] = ..., include_caption: _Optional[bool] = ..., include_vector: _Optional[bool] = ..., nprobe: _Optional[int] = ..., ef_search: _Optional[int] = ..., rerank_text: _Optional[str] = ..., caption_model: _Optional[str] = ..., min_score: _Optional[float] = ..., min_rerank_probability: _Optional[float] = ..., include_regions: _Optional[bool] = ..., ask: _Optional[str] = ..., ask_model: _Optional[str] = ..., offset: _Optional[int] = ..., local_only: _Optional[bool] = ..., allow_partial: _Optional[bool] = ..., keywords: _Optional[str] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("mask_png", "view_left", "view_top", "view_right", "view_bottom", "x0", "y0", "x1", "y1", "score", "coverage")
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    VIEW_LEFT_FIELD_NUMBER: _ClassVar[int]
    VIEW_TOP_FIELD_NUMBER: _ClassVar[int]
    VIEW_RIGHT_FIELD_NUMBER: _ClassVar[int]
    VIEW_BOTTOM_FIELD_NUMBER: _ClassVar[int]
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    mask_png: bytes
    view_left: float
    view_top: float
    view_right: float
    view_bottom: float
    x0: int
    y0: int
    x1: int
    y1: int
    score: float
    coverage: float
    def __init__(self, mask_png: _Optional[bytes] = ..., view_left: _Optional[float] = ..., view_top: _Optional[float] = ..., view_right: _Optional[float] = ..., view_bottom: _Optional[float] = ..., x0: _Optional[int] = ..., y0: _Optional[int] = ..., x1: _Optional[int] = ..., y1: _Optional[int] = ..., score: _Optional[float] = ..., coverage: _Optional[float] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "uri", "score", "rerank_score", "metadata", "caption", "vector", "width", "height", "region", "answer", "sha256", "vector_score", "keyword_score")
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RERANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SCORE_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: int
    uri: str
    score: float
    rerank_score: float
    metadata: _struct_pb2.Struct
    caption: str
    vector: Vector
    width: int
    height: int
    region: Region
    answer: str
    sha256: str
    vector_score: float
    keyword_score: float
    def __init__(self, id: _Optional[int] = ..., uri: _Optional[str] = ..., score: _Optional[float] = ..., rerank_score: _Optional[float] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., caption: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., region: _Optional[_Union[Region, _Mapping]] = ..., answer: _Optional[str] = ..., sha256: _Optional[str] = ..., vector_score: _Optional[float] = ..., keyword_score: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("encode_ms", "filter_ms", "ann_ms", "fetch_ms", "rerank_ms", "total_ms", "caption_ms", "regions_ms", "ask_ms", "keyword_ms")
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    FILTER_MS_FIELD_NUMBER: _ClassVar[int]
    ANN_MS_FIELD_NUMBER: _ClassVar[int]
    FETCH_MS_FIELD_NUMBER: _ClassVar[int]
    RERANK_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    CAPTION_MS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_MS_FIELD_NUMBER: _ClassVar[int]
    ASK_MS_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_MS_FIELD_NUMBER: _ClassVar[int]
    encode_ms: float
    filter_ms: float
    ann_ms: float
    fetch_ms: float
    rerank_ms: float
    total_ms: float
    caption_ms: float
    regions_ms: float
    ask_ms: float
    keyword_ms: float
    def __init__(self, encode_ms: _Optional[float] = ..., filter_ms: _Optional[float] = ..., ann_ms: _Optional[float] = ..., fetch_ms: _Optional[float] = ..., rerank_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., caption_ms: _Optional[float] = ..., regions_ms: _Optional[float] = ..., ask_ms: _Optional[float] = ..., keyword_ms: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "timing", "filter_strategy", "candidates", "next_offset", "missing_shards", "score_kind")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    FILTER_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_KIND_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    timing: Timing
    filter_strategy: str
    candidates: int
    next_offset: int
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    score_kind: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., filter_strategy: _Optional[str] = ..., candidates: _Optional[int] = ..., next_offset: _Optional[int] = ..., missing_shards: _Optional[_Iterable[int]] = ..., score_kind: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("collection", "model", "texts", "images")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, collection: _Optional[str] = ..., model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("text_vectors", "image_vectors", "dim", "model")
    TEXT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    text_vectors: _containers.RepeatedCompositeFieldContainer[Vector]
    image_vectors: _containers.RepeatedCompositeFieldContainer[Vector]
    dim: int
    model: str
    def __init__(self, text_vectors: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., image_vectors: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., dim: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("model", "image", "texts")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("probabilities",)
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class CaptionRequest(_message.Message):
    __slots__ = ("model", "images", "prompt", "max_new_tokens", "num_beams")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    prompt: str
    max_new_tokens: int
    num_beams: int
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., prompt: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., num_beams: _Optional[int] = ...) -> None: ...

class CaptionResponse(_message.Message):
    __slots__ = ("captions",)
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    captions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, captions: _Optional[_Iterable[str]] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("model", "question", "images", "collection", "item_ids", "max_new_tokens", "num_beams")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    question: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    collection: str
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    max_new_tokens: int
    num_beams: int
    def __init__(self, model: _Optional[str] = ..., question: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., collection: _Optional[str] = ..., item_ids: _Optional[_Iterable[int]] = ..., max_new_tokens: _Optional[int] = ..., num_beams: _Optional[int] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, answers: _Optional[_Iterable[str]] = ...) -> None: ...

class UpsertItem(_message.Message):
    __slots__ = ("uri", "image", "metadata", "caption", "vector")
    URI_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    uri: str
    image: bytes
    metadata: _struct_pb2.Struct
    caption: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, uri: _Optional[str] = ..., image: _Optional[bytes] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., caption: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "item")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    collection: str
    item: UpsertItem
    def __init__(self, collection: _Optional[str] = ..., item: _Optional[_Union[UpsertItem, _Mapping]] = ...) -> None: ...

class ItemStatus(_message.Message):
    __slots__ = ("index", "uri", "ok", "id", "code", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    uri: str
    ok: bool
    id: int
    code: int
    error: str
    def __init__(self, index: _Optional[int] = ..., uri: _Optional[str] = ..., ok: _Optional[bool] = ..., id: _Optional[int] = ..., code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("statuses", "upserted", "failed")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[ItemStatus]
    upserted: int
    failed: int
    def __init__(self, statuses: _Optional[_Iterable[_Union[ItemStatus, _Mapping]]] = ..., upserted: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "include_vector")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTOR_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    include_vector: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., include_vector: _Optional[bool] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "uri", "sha256", "width", "height", "caption", "metadata", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: int
    uri: str
    sha256: str
    width: int
    height: int
    caption: str
    metadata: _struct_pb2.Struct
    vector: Vector
    def __init__(self, id: _Optional[int] = ..., uri: _Optional[str] = ..., sha256: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., caption: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "model", "index", "text_fields")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    index: str
    text_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., index: _Optional[str] = ..., text_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "model", "model_digest", "dim", "items", "index", "indexed", "text_fields")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    model_digest: str
    dim: int
    items: int
    index: str
    indexed: int
    text_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., model_digest: _Optional[str] = ..., dim: _Optional[int] = ..., items: _Optional[int] = ..., index: _Optional[str] = ..., indexed: _Optional[int] = ..., text_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectionStatsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
