"""The HTTP transport: the search page, a JSON API, /metrics and health, as a thin layer over search/service.py.

    app = build_app(service, metrics, executor, ready)       # a FastAPI app (OpenAPI docs at /docs)
    transport = HttpTransport(app, "127.0.0.1:8080", drain_s=30); transport.start(); ...; transport.stop(5)

Like the gRPC servicer (search/grpc_api.py), each route converts the request into one Service call, runs
it on the server's request threads and converts the result back; errors (mmsearch.errors) become their
class's `http_status` with a JSON body {"error": {"code", "status", "message"}}, where status is the gRPC
status name, so scripts can treat both transports alike. Calls without an `X-Request-Timeout` header
(seconds) get the server's default_deadline_s, as gRPC calls without a deadline do.

Auth: with a token, every /api/ route needs `Authorization: Bearer <token>`; the page, its static files,
/docs, /healthz, /readyz and /metrics stay open. Thumbnails and originals are loaded by <img> tags, which
cannot send headers, so the URLs the API hands out carry `sig`, an HMAC of (kind, collection, id) under a
key derived from the token: a URL works only if the server made it. Media are found by item id only: the
thumbnail by the item's stored sha256, the original through ItemImages (the kept copy of uploaded bytes,
or the file under image_roots that still has the item's sha256); no path from a request reaches the disk.

Limits: the body may be at most 4/3 of max_message_mb (base64 inflates images by that much) and a decoded
image at most max_message_mb, as gRPC's message limit; everything else is checked by the service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import logging
import math
import os
import secrets
import socket
import threading
import time
from importlib.resources import files
from typing import Annotated, Any, Callable
from urllib.parse import quote

from fastapi import Depends, FastAPI, Path, Query as QueryParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmsearch.errors import InvalidInput, MMSearchError, NotFound, TooLarge, Unauthenticated
from search.auth import TokenCheck
from search.metrics import Metrics, status_of
from search.pipeline import MAX_TOP_K, Query
from search.service import CollectionInfo, Service

log = logging.getLogger("mmsearch.http")

STATIC = files("search.web") / "static"
TIMEOUT_HEADER = "x-request-timeout"
ONE_YEAR = 31_536_000
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text (it holds an unpaired surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]
Int32 = Annotated[int, Field(ge=INT32[0], le=INT32[1])]
Int64 = Annotated[int, Field(ge=INT64[0], le=INT64[1])]
ItemId = Annotated[int, Path(ge=0, le=INT64[1], description="item id")]


# -- request and response bodies (the OpenAPI schema at /docs is generated from these) ----------------------

class RerankIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Text = Field("", description="reranker (BLIP / BLIP-2 ITM) the server allows; empty: no rerank")
    depth: Int32 = Field(0, description="first-stage candidates through ITM; 0: server default")


class SearchIn(BaseModel):
    """One query: at most one of text, image, vector, item_id, and / or keywords."""

    model_config = ConfigDict(extra="forbid")
    text: Text | None = Field(None, description="text -> image search (any language the encoder speaks)")
    image: str | None = Field(None, description="an encoded image (JPEG, PNG, ...) as base64 or a data: URL")
    vector: list[float] | None = Field(None, description="a query vector of the collection's dimension")
    item_id: Int64 | None = Field(None, description='"more like this": the stored vector of that item')
    top_k: Int32 = Field(10, description=f"hits per page, 1..{MAX_TOP_K}")
    offset: Int32 = Field(0, description=f"skip this many ranked hits (paging); offset + top_k <= {MAX_TOP_K}")
    min_score: float | None = Field(None, description="only hits whose first-stage score is >= this")
    filter: Text = Field("", description='filter expression, e.g. width >= 512 AND meta.license = "cc0"')
    rerank: RerankIn | None = None
    rerank_text: Text = Field("", description="text for the reranker when the query is not a text")
    caption_model: Text = Field("", description="write captions for hits that have none (not stored)")
    include_metadata: bool = False
    include_caption: bool = False
    include_vector: bool = False
    nprobe: Int32 = Field(0, description="IVF probes; 0: index default")
    ef_search: Int32 = Field(0, description="HNSW ef; 0: index default")
    min_rerank_probability: float | None = Field(None, description="with rerank: only hits whose ITM P(match) >= this")
    include_regions: bool = Field(False, description="GroupViT collections, text queries: where each hit matched")
    ask: Text = Field("", description="a question answered about each hit by ask_model")
    ask_model: Text = Field("", description="BLIP VQA / BLIP-2 checkpoint the server allows")
    keywords: Text = Field("", description="words that must all appear in a hit's caption, file name or text "
                           "fields; alone: keyword matches; beside a query: fused by reciprocal rank fusion")


class RegionOut(BaseModel):
    mask_png: str = Field(description="1-bit PNG (base64), white = the region, covering `view`")
    view: list[float] = Field(description="left, top, right, bottom of the model's view, in image pixels")
    box: list[int] = Field(description="x0, y0, x1, y1 of the region, in image pixels")
    score: float
    coverage: float


class EmbedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    collection: Text = Field("", description="use this collection's encoder ...")
    model: Text = Field("", description="... or a model the server allows")
    texts: list[Text] = []
    images: list[str] = Field([], description="encoded images as base64 or data: URLs")


class HitOut(BaseModel):
    id: int
    uri: str
    score: float = Field(description="first-stage score (inner product of unit vectors)")
    rerank_score: float | None = Field(None, description="ITM P(match), when reranked")
    vector_score: float | None = Field(None, description="with keywords: the cosine, when the vector list held it")
    keyword_score: float | None = Field(None, description="with keywords: the keyword score, when it matched")
    width: int
    height: int
    sha256: str
    thumbnail: str = Field(description="URL of the thumbnail (WebP, cached for a year)")
    image: str = Field(description="URL of the original, served when the server may read it")
    metadata: dict | None = None
    caption: str | None = None
    vector: list[float] | None = None
    region: RegionOut | None = None
    answer: str | None = None


class SearchOut(BaseModel):
    hits: list[HitOut]
    timing: dict[str, float] = Field(description="milliseconds per stage")
    filter_strategy: str
    score_kind: str = Field(description='what score is: "vector" (cosine), "keyword" or "rrf" (fused)')
    candidates: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null when this page is the last")


class ErrorOut(BaseModel):
    class Detail(BaseModel):
        code: int
        status: str = Field(description="the gRPC status name of the same error")
        message: str

    error: Detail


ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 429, 503, 504)}


# -- helpers ------------------------------------------------------------------------------------------------

def decode_image(data: str, what: str, max_bytes: int) -> bytes:
    """base64 (or a data: URL) -> bytes, within the message limit."""
    if data.startswith("data:"):
        head, _, data = data.partition(",")
        if ";base64" not in head:
            raise InvalidInput(f"{what}: a data: URL must be base64 encoded")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what}: not valid base64") from None
    if len(raw) > max_bytes:
        raise TooLarge(f"{what}: {len(raw) / 2**20:.1f} MB is more than this server takes per request "
                       f"({max_bytes / 2**20:.0f} MB)")
    return raw


def to_query(collection: str, body: SearchIn, max_bytes: int) -> Query:
    rerank = body.rerank or RerankIn()
    return Query(collection=collection, text=body.text,
                 image=None if body.image is None else decode_image(body.image, "image", max_bytes),
                 vector=body.vector, item_id=body.item_id, top_k=body.top_k, offset=body.offset,
                 min_score=body.min_score, filter=body.filter, rerank_model=rerank.model, rerank_depth=rerank.depth,
                 rerank_text=body.rerank_text, caption_model=body.caption_model,
                 include_metadata=body.include_metadata, include_caption=body.include_caption,
                 include_vector=body.include_vector, nprobe=body.nprobe, ef=body.ef_search,
                 min_rerank_probability=body.min_rerank_probability, include_regions=body.include_regions,
                 ask=body.ask, ask_model=body.ask_model, keywords=body.keywords)


def request_deadline(request: Request, default_s: float) -> float:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return time.monotonic() + default_s
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise InvalidInput(f"X-Request-Timeout must be a number of seconds > 0, got {raw[:40]!r}")
    return time.monotonic() + seconds


class MediaUrls:
    """URLs of thumbnails and originals: .../items/ID/thumbnail?v=SHA256&sig=HMAC. `v` is the item's content
    hash when the URL was made, so a new URL comes with new content and a URL can be cached for good;
    `sig` (an HMAC of kind, collection, id and v) proves the server made the URL from its catalog. It lets an
    <img> tag in when the server has a token (the key derives from it, so URLs outlive restarts), and lets a
    thumbnail be served from DATA_DIR/thumbs/<v> without reading the catalog again (without a token the key
    is random per process)."""

    def __init__(self, token: str | None):
        self.key = (hashlib.sha256(b"mmsearch media url\0" + token.encode()).digest() if token
                    else secrets.token_bytes(32))

    def sign(self, kind: str, collection: str, item_id: int, sha256: str) -> str:
        message = f"{kind}\0{collection}\0{item_id}\0{sha256}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]

    def url(self, kind: str, collection: str, item_id: int, sha256: str) -> str:
        return (f"/api/v1/collections/{quote(collection, safe='')}/items/{item_id}/{kind}"
                f"?v={sha256}&sig={self.sign(kind, collection, item_id, sha256)}")

    def made(self, kind: str, collection: str, item_id: int, sha256: str, sig: str) -> bool:
        """Whether the server made this URL (for the content `sha256` of that item)."""
        return bool(sig) and hmac.compare_digest(sig.encode("utf-8", "replace"),
                                                 self.sign(kind, collection, item_id, sha256).encode())


IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))


def image_type(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, kind in IMAGE_TYPES:
        if data.startswith(magic):
            return kind
    return "application/octet-stream"


def _info_json(info: CollectionInfo) -> dict:
    return {"name": info.name, "model": info.model, "model_digest": info.model_digest, "dim": info.dim,
            "items": info.items, "index": info.index, "indexed": info.indexed, "text_fields": info.text_fields}


def _time(value) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


# -- middleware (plain ASGI, so they see every request, errors included) -------------------------------------

class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, by Content-Length or while they stream in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        message = (f"request body over this server's limit of {self.limit / 2**20:.1f} MB "
                   f"(4/3 of max_message_mb, for base64)")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = _error_json(TooLarge(message))
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.limit:  # an HTTPException, so FastAPI's body parsing lets it through
                    raise StarletteHTTPException(413, message)
            return event

        await self.app(scope, limited, send)


class Observe:
    """Count and time every call of a named route (requests, errors by status, latency) into Metrics, and
    turn a bug into a 500 with a generic message (the traceback goes to the log only)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status, started = [500], [False]

        async def watch(event):
            if event["type"] == "http.response.start":
                status[0], started[0] = event["status"], True
            await send(event)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # a bug: log it, answer without internals, keep the connection and serving
            log.exception("%s %s crashed", scope.get("method"), scope.get("path"))
            scope.setdefault("state", {})["mmsearch_error"] = status_of(exc)
            if status[0] == 500 and not started[0]:
                response = _error_json(MMSearchError(f"internal error ({type(exc).__name__}); "
                                                     f"the server log has the details"))
                await response(scope, receive, watch)
        finally:
            name = getattr(scope.get("route"), "name", "")
            if name[:1].isupper():  # API routes are named like RPCs; the page's files are not counted
                error = (scope.get("state") or {}).get("mmsearch_error")
                if error is None and status[0] >= 400:
                    error = "INTERNAL" if status[0] >= 500 else "INVALID_ARGUMENT"
                self.metrics.observe_request("http", name, error, time.perf_counter() - start)


def _error_json(exc: MMSearchError, status_name: str | None = None, code: int | None = None) -> JSONResponse:
    code = code or exc.http_status
    headers = {}
    if code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if code in (429, 503):
        headers["Retry-After"] = "1"
    body = {"error": {"code": code, "status": status_name or exc.grpc_status, "message": exc.brief()}}
    return JSONResponse(body, status_code=code, headers=headers)


# -- the app --------------------------------------------------------------------------------------------------

class Ready:
    """What /readyz reports: set to False when shutdown begins (the NOT_SERVING window)."""

    def __init__(self):
        self.serving = True


def build_app(service: Service, metrics: Metrics, executor, ready: Ready) -> FastAPI:
    from fastapi_offline import FastAPIOffline

    config = service.config
    max_bytes = config.max_message_bytes
    tokens = TokenCheck(config.token) if config.token else None
    media = MediaUrls(config.token)
    bearer = HTTPBearer(auto_error=False, description="the server's token (when it has one)")

    app = FastAPIOffline(title="mmsearch", version="1", docs_url="/docs", redoc_url=None,
                         static_url="/docs-static", description=__doc__.split("\n\n")[0],
                         openapi_tags=[{"name": "search"}, {"name": "items"}, {"name": "collections"},
                                       {"name": "operations"}])

    async def run(fn: Callable, *args, **kwargs) -> Any:
        """Run a blocking service call on the server's request threads."""
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args, **kwargs))

    def authorize(request: Request, _creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if tokens is not None:
            tokens.check(request.headers.get("authorization"))

    def authorize_media(request: Request, kind: str, collection: str, item_id: int, v: str, sig: str) -> bool:
        """True when the URL is one the server made (no catalog read needed); else the token, if any."""
        if media.made(kind, collection, item_id, v, sig):
            return True
        if tokens is not None:
            if sig and "authorization" not in request.headers:
                raise Unauthenticated("this media URL's signature is not valid here (ask the API for a fresh URL)")
            tokens.check(request.headers.get("authorization"))
        return False

    def deadline(request: Request) -> float:
        return request_deadline(request, config.default_deadline_s)

    def hit_json(collection: str, hit) -> dict:
        out = {"id": hit.id, "uri": hit.uri, "score": hit.score, "rerank_score": hit.rerank_score,
               "width": hit.width, "height": hit.height, "sha256": hit.sha256,
               "thumbnail": media.url("thumbnail", collection, hit.id, hit.sha256),
               "image": media.url("image", collection, hit.id, hit.sha256)}
        if hit.metadata is not None:
            out["metadata"] = hit.metadata
        if hit.caption is not None:
            out["caption"] = hit.caption
        if hit.vector is not None:
            out["vector"] = hit.vector.tolist()
        if hit.region is not None:
            r = hit.region
            out["region"] = {"mask_png": base64.b64encode(r.mask_png).decode(), "view": list(r.view),
                             "box": list(r.box), "score": r.score, "coverage": r.coverage}
        if hit.answer is not None:
            out["answer"] = hit.answer
        if hit.vector_score is not None:
            out["vector_score"] = hit.vector_score
        if hit.keyword_score is not None:
            out["keyword_score"] = hit.keyword_score
        return out

    def item_json(collection: str, row, include_vector: bool) -> dict:
        out = {"id": row.id, "uri": row.uri, "sha256": row.sha256, "width": row.width or 0,
               "height": row.height or 0, "caption": row.caption or "", "metadata": row.meta or {},
               "created": _time(row.created), "updated": _time(row.updated),
               "thumbnail": media.url("thumbnail", collection, row.id, row.sha256),
               "image": media.url("image", collection, row.id, row.sha256)}
        if include_vector:
            out["vector"] = row.vector_array().tolist()
        return out

    async def search_response(collection: str, query: Query, request: Request) -> JSONResponse:
        result = await run(service.search, query, deadline(request))
        return JSONResponse({"hits": [hit_json(collection, h) for h in result.hits],
                             "timing": {k: round(v, 3) for k, v in result.timing.items()},
                             "filter_strategy": result.filter_strategy, "score_kind": result.score_kind,
                             "candidates": result.candidates,
                             "offset": query.offset, "next_offset": result.next_offset or None})

    # -- errors --

    @app.exception_handler(MMSearchError)
    async def on_error(request: Request, exc: MMSearchError):
        request.state.mmsearch_error = exc.grpc_status
        if exc.http_status >= 500 and exc.grpc_status == "INTERNAL":
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return _error_json(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        parts = []
        for error in exc.errors()[:10]:
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",)) or "body"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        error = InvalidInput("; ".join(parts) or "invalid request")
        request.state.mmsearch_error = error.grpc_status
        return _error_json(error)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        names = {404: "NOT_FOUND", 405: "UNIMPLEMENTED", 413: "RESOURCE_EXHAUSTED"}
        status = names.get(exc.status_code, "INVALID_ARGUMENT" if exc.status_code < 500 else "INTERNAL")
        request.state.mmsearch_error = status
        return _error_json(MMSearchError(str(exc.detail)), status, exc.status_code)

    # -- search --

    @app.post("/api/v1/collections/{collection}/search", name="Search", tags=["search"],
              dependencies=[Depends(authorize)], responses={200: {"model": SearchOut}, **ERRORS})
    async def search(collection: str, body: SearchIn, request: Request):
        """Search a collection by text, image (base64), vector or item id, one page at a time."""
        return await search_response(collection, to_query(collection, body, max_bytes), request)

    @app.post("/api/v1/collections/{collection}/search/upload", name="SearchUpload", tags=["search"],
              dependencies=[Depends(authorize)], responses={200: {"model": SearchOut}, **ERRORS},
              openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["image"],
                  "properties": {"image": {"type": "string", "format": "binary"},
                                 **{name: {"type": "string"} for name in (
                                     "top_k", "offset", "min_score", "filter", "rerank_model", "rerank_depth",
                                     "rerank_text", "include_metadata", "include_caption", "keywords")}}}}}}})
    async def search_upload(collection: str, request: Request):
        """Search by an uploaded image (multipart/form-data: `image` plus any SearchIn field as a form field;
        rerank as rerank_model / rerank_depth)."""
        try:
            form = await request.form(max_files=1, max_fields=32)
        except StarletteHTTPException as exc:  # malformed multipart, too many parts
            if exc.status_code == 413:
                raise
            raise InvalidInput(f"multipart body: {exc.detail}") from None
        except (AssertionError, ValueError, KeyError) as exc:  # no or a broken multipart boundary
            raise InvalidInput(f"send multipart/form-data with an `image` file ({exc})") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("multipart body: give the image as a file field named `image`")
        fields: dict[str, Any] = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
        rerank = {k: fields.pop(f"rerank_{k}") for k in ("model", "depth") if f"rerank_{k}" in fields}
        if rerank:
            fields["rerank"] = rerank
        try:
            body = SearchIn.model_validate(fields)
        except ValueError as exc:
            errors = getattr(exc, "errors", lambda: [])()
            raise RequestValidationError(errors) from None
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise TooLarge(f"image: more than this server takes per request ({max_bytes / 2**20:.0f} MB)")
        query = to_query(collection, body, max_bytes)
        query.image = data
        return await search_response(collection, query, request)

    @app.post("/api/v1/embed", name="Embed", tags=["search"], dependencies=[Depends(authorize)], responses=ERRORS)
    async def embed(body: EmbedIn, request: Request):
        """Texts and/or images -> vectors, with a collection's encoder or a model the server allows."""
        images = [decode_image(data, f"images[{i}]", max_bytes) for i, data in enumerate(body.images)]
        result = await run(service.embed, collection=body.collection, model=body.model, texts=body.texts,
                           images=images, deadline=deadline(request))
        return JSONResponse({"model": result.model, "dim": result.dim,
                             "text_vectors": result.text_vectors.tolist(),
                             "image_vectors": result.image_vectors.tolist()})

    # -- items --

    @app.get("/api/v1/collections/{collection}/items", name="Get", tags=["items"],
             dependencies=[Depends(authorize)], responses=ERRORS)
    async def get_items(collection: str, ids: list[str] = QueryParam(..., description="ids: ?ids=1,2&ids=3"),
                        include_vector: bool = False):
        """Items by id, in request order."""
        numbers = []
        for part in ",".join(ids).split(","):
            part = part.strip()
            if not part.isdigit() or int(part) > INT64[1]:
                raise InvalidInput(f"ids: {part[:40]!r} is not an item id")
            numbers.append(int(part))
        rows = await run(service.get, collection, numbers, include_vector=include_vector)
        return JSONResponse({"items": [item_json(collection, row, include_vector) for row in rows]})

    @app.get("/api/v1/collections/{collection}/items/{item_id}", name="GetItem", tags=["items"],
             dependencies=[Depends(authorize)], responses=ERRORS)
    async def get_item(collection: str, item_id: ItemId, include_vector: bool = False):
        """One item: uri, size, caption, metadata, media URLs."""
        rows = await run(service.get, collection, [item_id], include_vector=include_vector)
        return JSONResponse(item_json(collection, rows[0], include_vector))

    @app.get("/api/v1/collections/{collection}/items/{item_id}/thumbnail", name="Thumbnail", tags=["items"],
             responses={200: {"content": {"image/webp": {}}}, **ERRORS})
    async def thumbnail(collection: str, item_id: ItemId, request: Request, v: str = "", sig: str = ""):
        """The item's thumbnail (WebP, longest side 256 px), found by the item's stored content hash."""
        from indexer.files import read_file
        from indexer.thumbnails import thumbnail_path

        public = tokens is None
        if authorize_media(request, "thumbnail", collection, item_id, v, sig):
            # a URL the server made names the content: read the file on the loop, no catalog, no thread hop
            path = thumbnail_path(service.store.media_dir, v)
            if os.path.exists(path):
                return _thumbnail(request, read_file(path, max_bytes=16 << 20), True, public)
        path, row = await run(service.thumbnail, collection, item_id, deadline(request))
        if path is None:
            raise NotFound(f"item {item_id} has no thumbnail (its original cannot be read here)")
        return _thumbnail(request, await run(read_file, path, max_bytes=16 << 20), v == row.sha256, public)

    @app.get("/api/v1/collections/{collection}/items/{item_id}/image", name="Image", tags=["items"],
             responses={200: {"content": {"image/*": {}}}, **ERRORS})
    async def original(collection: str, item_id: ItemId, request: Request, v: str = "", sig: str = ""):
        """The image the item was made from, when the server may read it (a kept upload, or a file under
        image_roots that still has the item's content)."""
        authorize_media(request, "image", collection, item_id, v, sig)
        data, row = await run(service.original, collection, item_id)
        response = _cached(request, data, image_type(data), f'"{row.sha256}"', v == row.sha256,
                           public=tokens is None)
        response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
        return response

    # -- collections --

    @app.get("/api/v1/collections", name="ListCollections", tags=["collections"],
             dependencies=[Depends(authorize)], responses=ERRORS)
    async def list_collections():
        """Every collection with its encoder and item count."""
        return JSONResponse({"collections": [_info_json(i) for i in await run(service.list_collections)]})

    @app.get("/api/v1/collections/{collection}", name="CollectionStats", tags=["collections"],
             dependencies=[Depends(authorize)], responses=ERRORS)
    async def collection_stats(collection: str):
        """One collection, with its index kind and the vectors its index holds."""
        return JSONResponse(_info_json(await run(service.collection_stats, collection)))

    @app.get("/api/v1/settings", name="Settings", tags=["collections"], dependencies=[Depends(authorize)],
             responses=ERRORS)
    async def settings():
        """What the page offers: the rerankers this server allows, rerank depths, the deepest page."""
        rerankers = await run(service.rerankers)
        return JSONResponse({"rerankers": rerankers, "rerank_default_depth": config.rerank_default_depth,
                             "rerank_max_depth": config.rerank_max_depth, "max_top_k": MAX_TOP_K,
                             "auth": tokens is not None})

    # -- operations (open, like gRPC health) --

    @app.get("/healthz", tags=["operations"])
    async def healthz():
        """Liveness: 200 while the process runs; `status` says SERVING or NOT_SERVING."""
        return {"status": "SERVING" if ready.serving else "NOT_SERVING"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "shutting down"}})
    async def readyz():
        """Readiness: 200 while serving, 503 from SIGTERM on (load balancers move away)."""
        status = "SERVING" if ready.serving else "NOT_SERVING"
        return JSONResponse({"status": status}, status_code=200 if ready.serving else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def prometheus():
        """Prometheus text format: requests, errors, stage latency, batch sizes, collections, models."""
        body, content_type = await run(metrics.render)
        return Response(body, media_type=content_type)

    # -- the page --

    page_headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"), headers=page_headers)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    app.add_middleware(Observe, metrics=metrics)
    app.add_middleware(BodyLimit, limit=max_bytes * 4 // 3 + 65536)
    return app


def _thumbnail(request: Request, data: bytes, immutable: bool, public: bool) -> Response:
    etag = '"' + hashlib.blake2b(data, digest_size=16).hexdigest() + '"'
    return _cached(request, data, "image/webp", etag, immutable, public=public)


def _cached(request: Request, data: bytes, media_type: str, etag: str, immutable: bool, *, public: bool) -> Response:
    """A response the browser keeps: for good when the URL names the content (`v`), else revalidated by ETag."""
    scope = "public" if public else "private"
    headers = {"ETag": etag, "X-Content-Type-Options": "nosniff",
               "Cache-Control": f"{scope}, max-age={ONE_YEAR}, immutable" if immutable else f"{scope}, no-cache"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


# -- running it -----------------------------------------------------------------------------------------------

def listen_socket(address: str) -> socket.socket:
    """A bound socket for HOST:PORT ([v6]:PORT too; port 0 picks a free one), or InvalidInput."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(f"http address {address!r}: expected HOST:PORT")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {address} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


class HttpTransport:
    """uvicorn serving `app` on its own thread and event loop; `stop(grace)` stops taking connections and
    lets requests in flight finish within `grace` seconds."""

    def __init__(self, app, address: str, *, drain_s: float, tls_cert: str | None = None, tls_key: str | None = None):
        import uvicorn

        self.sock = listen_socket(address)
        self.port = self.sock.getsockname()[1]
        self.tls = bool(tls_cert)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False,
                                timeout_graceful_shutdown=drain_s, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
                                timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="mmsearch-http", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise InvalidInput(f"the HTTP server did not start: {self.error!r}")
            if time.monotonic() > end:
                raise InvalidInput(f"the HTTP server did not start within {timeout:.0f}s")
            time.sleep(0.01)

    def stop(self, grace: float) -> None:
        # uvicorn reports a zero timeout as cancelled tasks even when none run; a tenth of a second is "now"
        self.server.config.timeout_graceful_shutdown = max(grace, 0.1)
        self.server.should_exit = True

    def wait(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)
