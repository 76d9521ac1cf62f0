"""The gRPC server: mmsearch.v1.SearchService plus grpc.health.v1.Health and server reflection.

    from search.server import ServerConfig, serve
    serve(ServerConfig(address="0.0.0.0:50051", data_dir="./mmsearch-data"))    # blocks until SIGTERM/SIGINT

Requests run on a thread pool; encoder calls from concurrent requests are batched (search/batching.py).
Each model is loaded once and shared by every collection bound to it. Deadlines are honoured between
stages and while waiting for a batch. SIGTERM (or SIGINT) marks the health service NOT_SERVING, stops
accepting RPCs, lets in-flight ones finish (up to `drain_seconds`), then returns. With a `token`, every
SearchService call must carry `authorization: Bearer <token>` metadata (health and reflection stay open,
so probes and grpcurl listing work). With `tls_cert` + `tls_key` the port speaks TLS.

Errors: `status_for` maps encoders.errors classes to status codes in one place; the server stays up after
every failed call, and every message says what was wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import signal
import sys
import tempfile
import threading
import time
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mmsearch.errors import CheckpointError, Conflict, ImageError, InvalidInput, MMSearchError, NotFound, TooLarge
from protos.mmsearch.v1 import search_pb2 as pb
from protos.mmsearch.v1 import search_pb2_grpc as pb_grpc
from search.batching import BatcherClosed, DeadlineExceeded
from search.pipeline import DEFAULT_RERANK_DEPTH, MAX_RERANK_DEPTH, Models, Query, Searcher, image_blob_path, remaining

log = logging.getLogger("mmsearch.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
MAX_EMBED_INPUTS = 1024
MAX_CAPTION_TOKENS = 256
MAX_BEAMS = 16
UPSERT_CHUNK = 32


@dataclass
class ServerConfig:
    address: str = "127.0.0.1:50051"
    data_dir: str | None = None          # None: $MMSEARCH_DATA or ./mmsearch-data
    db: str | None = None                # SQLAlchemy URL of the catalog (default: SQLite in data_dir)
    workers: int = 16                    # gRPC thread pool size
    max_message_mb: float = 64.0         # largest request / response message
    token: str | None = None             # bearer token; None: no auth ($MMSEARCH_TOKEN is read by the CLI)
    tls_cert: str | None = None          # PEM files; both or neither
    tls_key: str | None = None
    batching: bool = True
    batch_max: int = 32
    batch_wait_ms: float = 2.0
    rerank_default_depth: int = DEFAULT_RERANK_DEPTH
    rerank_max_depth: int = MAX_RERANK_DEPTH
    drain_seconds: float = 30.0
    device: str = "cpu"
    allow_models: list[str] | None = None   # models requests may name (None: any the server can load)
    preload: list[str] = field(default_factory=list)   # dual encoders to load at start
    upsert_roots: list[str] = field(default_factory=list)  # folders Upsert may read by uri (none: bytes only)
    keep_images: bool = True             # keep Upsert image bytes under DATA_DIR/images for rerank / captions

    @classmethod
    def from_file(cls, path: str, **overrides) -> "ServerConfig":
        """Read a TOML file whose keys are the field names; `overrides` that are not None win."""
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise InvalidInput(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config file {path}: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInput(f"config file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def check(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidInput("TLS needs both tls_cert and tls_key")
        if not 1 <= self.workers <= 1024:
            raise InvalidInput(f"workers must be 1..1024, got {self.workers}")
        if not 0 < self.max_message_mb <= 2047:
            raise InvalidInput(f"max_message_mb must be in (0, 2047], got {self.max_message_mb}")
        if not 1 <= self.batch_max <= 4096 or self.batch_wait_ms < 0:
            raise InvalidInput("batch_max must be 1..4096 and batch_wait_ms >= 0")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)


# -- errors: the one place that maps errors to status codes ---------------------------------------------

def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, TooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, (InvalidInput, ImageError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, (Conflict, CheckpointError)):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, BatcherClosed):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def _rpc(method: Callable) -> Callable:
    """Run a servicer method with its deadline; turn every error into a status with a message."""
    name = method.__name__

    def wrapper(self, request, context):
        left = context.time_remaining()
        deadline = None if left is None else time.monotonic() + left
        try:
            return method(self, request, context, deadline)
        except MMSearchError as exc:
            code = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.error("%s failed: %s", name, exc)
            context.abort(code, f"{name}: {exc}")
        except Exception as exc:  # a bug: report it, keep serving
            if isinstance(exc, grpc.RpcError) or context.code() is not None:
                raise  # already aborted
            log.exception("%s crashed", name)
            context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error ({type(exc).__name__}: {exc})")

    wrapper.__name__ = name
    wrapper.__doc__ = method.__doc__
    return wrapper


# -- proto <-> python ------------------------------------------------------------------------------------

def struct_to_dict(message: struct_pb2.Struct) -> dict:
    """Struct -> dict; protobuf numbers are doubles, so integral values come back as ints."""
    def fix(value):
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value
    return fix(json_format.MessageToDict(message))


def dict_to_struct(value: dict | None) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if value:
        message.update(value)
    return message


def _vector(values: np.ndarray) -> pb.Vector:
    return pb.Vector(values=np.asarray(values, dtype=np.float32).tolist())


def _decode(data: bytes, what: str):
    from encoders.preprocess import load_image

    if not data:
        raise InvalidInput(f"{what}: empty image (0 bytes)")
    try:
        return load_image(bytes(data))
    except ImageError as exc:
        raise ImageError(f"{what}: {exc}") from None


# -- the service -------------------------------------------------------------------------------------------

class SearchService(pb_grpc.SearchServiceServicer):
    def __init__(self, store, models: Models, config: ServerConfig):
        self.store, self.models, self.config = store, models, config
        self.searcher = Searcher(store, models, default_depth=config.rerank_default_depth,
                                 max_depth=config.rerank_max_depth)
        self.roots = [os.path.realpath(r) for r in config.upsert_roots]

    # -- search and models --

    @_rpc
    def Search(self, request: pb.SearchRequest, context, deadline):
        kind = request.WhichOneof("query")
        if not request.collection:
            raise InvalidInput("collection is required")
        query = Query(
            collection=request.collection,
            text=request.text if kind == "text" else None,
            image=request.image if kind == "image" else None,
            vector=list(request.vector.values) if kind == "vector" else None,
            item_id=request.item_id if kind == "item_id" else None,
            top_k=request.top_k, filter=request.filter, rerank_model=request.rerank.model,
            rerank_depth=request.rerank.depth, rerank_text=request.rerank_text, caption_model=request.caption_model,
            include_metadata=request.include_metadata, include_caption=request.include_caption,
            include_vector=request.include_vector, nprobe=request.nprobe, ef=request.ef_search)
        result = self.searcher.search(query, deadline)
        response = pb.SearchResponse(filter_strategy=result.filter_strategy, candidates=result.candidates,
                                     timing=pb.Timing(**result.timing))
        for hit in result.hits:
            out = response.hits.add(id=hit.id, uri=hit.uri, score=hit.score, width=hit.width, height=hit.height)
            if hit.rerank_score is not None:
                out.rerank_score = hit.rerank_score
            if hit.metadata is not None:
                out.metadata.CopyFrom(dict_to_struct(hit.metadata))
            if hit.caption:
                out.caption = hit.caption
            if hit.vector is not None:
                out.vector.CopyFrom(_vector(hit.vector))
        return response

    @_rpc
    def Embed(self, request: pb.EmbedRequest, context, deadline):
        if bool(request.collection) == bool(request.model):
            raise InvalidInput("give either a collection or a model")
        n = len(request.texts) + len(request.images)
        if n == 0:
            raise InvalidInput("nothing to embed: give texts or images")
        if n > MAX_EMBED_INPUTS:
            raise InvalidInput(f"at most {MAX_EMBED_INPUTS} inputs per call, got {n}")
        for i, text in enumerate(request.texts):
            if not text.strip():
                raise InvalidInput(f"texts[{i}] is empty")
        enc = (self.models.for_collection(self.store.collection(request.collection)) if request.collection
               else self.models.dual(request.model))
        images = [_decode(data, f"images[{i}]") for i, data in enumerate(request.images)]
        response = pb.EmbedResponse(dim=int(enc.dim), model=enc.name)
        if request.texts:
            vecs = enc.encode_texts(list(request.texts), timeout=remaining(deadline, "encoding texts"))
            response.text_vectors.extend(_vector(v) for v in vecs)
        if images:
            vecs = enc.encode_images(images, timeout=remaining(deadline, "encoding images"))
            response.image_vectors.extend(_vector(v) for v in vecs)
        return response

    @_rpc
    def Rerank(self, request: pb.RerankRequest, context, deadline):
        if not request.texts:
            raise InvalidInput("nothing to score: give at least one text")
        for i, text in enumerate(request.texts):
            if not text.strip():
                raise InvalidInput(f"texts[{i}] is empty")
        if len(request.texts) > MAX_EMBED_INPUTS:
            raise InvalidInput(f"at most {MAX_EMBED_INPUTS} texts per call, got {len(request.texts)}")
        reranker = self.models.reranker(request.model)
        image = _decode(request.image, "image")
        remaining(deadline, "reranking")
        probs = reranker.score([image] * len(request.texts), list(request.texts))
        return pb.RerankResponse(probabilities=np.asarray(probs, dtype=np.float32).tolist())

    @_rpc
    def Caption(self, request: pb.CaptionRequest, context, deadline):
        if not request.images:
            raise InvalidInput("nothing to caption: give at least one image")
        if len(request.images) > MAX_EMBED_INPUTS:
            raise InvalidInput(f"at most {MAX_EMBED_INPUTS} images per call, got {len(request.images)}")
        if not 0 <= request.max_new_tokens <= MAX_CAPTION_TOKENS:
            raise InvalidInput(f"max_new_tokens must be 0..{MAX_CAPTION_TOKENS} (0 = 30), got {request.max_new_tokens}")
        if not 0 <= request.num_beams <= MAX_BEAMS:
            raise InvalidInput(f"num_beams must be 0..{MAX_BEAMS} (0 = 1), got {request.num_beams}")
        captioner = self.models.captioner(request.model)
        images = [_decode(data, f"images[{i}]") for i, data in enumerate(request.images)]
        remaining(deadline, "captioning")
        captions = captioner.caption(images, prompt=request.prompt or None, max_new_tokens=request.max_new_tokens or 30,
                                     num_beams=request.num_beams or 1)
        return pb.CaptionResponse(captions=captions)

    # -- items --

    @_rpc
    def Upsert(self, request_iterator, context, deadline):
        from indexer.sources import check_meta
        from indexer.store import UpsertRow

        response = pb.UpsertResponse()
        handle = enc = None
        pending: list[tuple[int, Any, UpsertRow]] = []   # (index, image, row without vector)

        def flush():
            remaining(deadline, "encoding the upserted images")
            vecs = enc.encode_images([image for _, image, _ in pending], timeout=remaining(deadline, "encoding"))
            rows = [dataclasses.replace(row, vector=v) for (_, _, row), v in zip(pending, vecs)]
            for (index, _, row), (item_id, problem) in zip(pending, handle.upsert(rows)):
                if problem is None:
                    response.statuses.add(index=index, uri=row.uri, ok=True, id=item_id)
                else:
                    response.statuses.add(index=index, uri=row.uri, ok=False, id=item_id, error=problem,
                                          code=grpc.StatusCode.ALREADY_EXISTS.value[0])
            pending.clear()

        def fail(index: int, uri: str, exc: Exception):
            response.statuses.add(index=index, uri=uri, ok=False, code=status_for(exc).value[0], error=str(exc))

        for index, request in enumerate(request_iterator):
            if handle is None:
                if not request.collection:
                    raise InvalidInput("the first Upsert message must name the collection")
                handle = self.store.collection(request.collection)
                enc = self.models.for_collection(handle)
            elif request.collection and request.collection != handle.name:
                raise InvalidInput(f"message {index} names collection {request.collection!r}; "
                                   f"this stream writes {handle.name!r}")
            item = request.item
            try:
                meta = struct_to_dict(item.metadata)
                problem = check_meta(meta)
                if problem:
                    raise InvalidInput(problem)
                data, uri = self._upsert_bytes(item)
                image = _decode(data, "image")
                sha = hashlib.sha256(data).hexdigest()
                uri = uri or f"sha256:{sha}"
                if self.config.keep_images and item.image:  # rerank and captions read it back later
                    self._keep_image(sha, data)
                pending.append((index, image, UpsertRow(uri=uri, sha256=sha, width=image.width, height=image.height,
                                                        vector=None, meta=meta, caption=item.caption or None)))
            except MMSearchError as exc:
                fail(index, item.uri, exc)
            if len(pending) >= UPSERT_CHUNK:
                flush()
        if handle is None:
            raise InvalidInput("empty Upsert stream: send at least one item")
        if pending:
            flush()
        response.statuses.sort(key=lambda s: s.index)
        response.upserted = sum(1 for s in response.statuses if s.ok)
        response.failed = len(response.statuses) - response.upserted
        return response

    def _upsert_bytes(self, item: pb.UpsertItem) -> tuple[bytes, str]:
        if item.image:
            return bytes(item.image), item.uri
        if not item.uri:
            raise InvalidInput("item needs image bytes or a uri")
        path = item.uri[len("file://"):] if item.uri.startswith("file://") else item.uri
        real = os.path.realpath(path)
        if not os.path.isabs(path) or not any(real == r or real.startswith(r + os.sep) for r in self.roots):
            allowed = ", ".join(self.roots) or "none configured"
            raise InvalidInput(f"the server reads images by uri only under its upsert_roots ({allowed}); "
                               f"send the image bytes instead")
        try:
            with open(real, "rb") as fh:
                data = fh.read(self.config.max_message_bytes + 1)
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > self.config.max_message_bytes:
            raise TooLarge(f"{path} is larger than {self.config.max_message_mb:g} MiB")
        return data, real

    def _keep_image(self, sha: str, data: bytes) -> None:
        path = image_blob_path(self.store.data_dir, sha)
        if os.path.exists(path):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    @_rpc
    def Delete(self, request: pb.DeleteRequest, context, deadline):
        if not request.ids:
            raise InvalidInput("give the ids to delete")
        handle = self.store.collection(request.collection)
        return pb.DeleteResponse(deleted=handle.delete(ids=list(request.ids)))

    @_rpc
    def Get(self, request: pb.GetRequest, context, deadline):
        if not request.ids:
            raise InvalidInput("give the ids to get")
        handle = self.store.collection(request.collection)
        rows = handle.get(list(request.ids), with_vectors=request.include_vector)
        missing = [i for i in request.ids if i not in rows]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise NotFound(f"item(s) {shown} not in collection {handle.name!r}")
        response = pb.GetResponse()
        for i in request.ids:
            row = rows[i]
            item = response.items.add(id=row.id, uri=row.uri, sha256=row.sha256, width=row.width or 0,
                                      height=row.height or 0, caption=row.caption or "",
                                      metadata=dict_to_struct(row.meta))
            if request.include_vector:
                item.vector.CopyFrom(_vector(row.vector_array()))
        return response

    # -- collections --

    def _info(self, row, *, stats: bool = False) -> pb.CollectionInfo:
        info = pb.CollectionInfo(name=row.name, model=row.encoder_name, model_digest=row.encoder_digest, dim=row.dim,
                                 items=self.store.catalog.count(row.id), index=row.index_spec)
        if stats:
            index = self.store.collection(row.name).index
            info.index, info.indexed = str(index.spec), index.ntotal
        return info

    @_rpc
    def CreateCollection(self, request: pb.CreateCollectionRequest, context, deadline):
        if not request.model:
            raise InvalidInput("model is required: the dual encoder the collection is bound to")
        from indexer.catalog import check_collection_name

        check_collection_name(request.name)
        enc = self.models.dual(request.model)
        handle = self.store.create_collection(request.name, enc, request.index or None)
        return self._info(handle.row)

    @_rpc
    def ListCollections(self, request, context, deadline):
        return pb.ListCollectionsResponse(collections=[self._info(row) for row in self.store.collections()])

    @_rpc
    def DropCollection(self, request: pb.DropCollectionRequest, context, deadline):
        self.store.drop_collection(request.name)
        return pb.DropCollectionResponse()

    @_rpc
    def CollectionStats(self, request: pb.CollectionStatsRequest, context, deadline):
        return self._info(self.store.collection(request.name).row, stats=True)


# -- auth --------------------------------------------------------------------------------------------------

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Every call outside health and reflection needs `authorization: Bearer <token>` metadata."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_METHOD_PREFIXES):
            return continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization")
        if given is None:
            return self._deny(continuation(details), "missing authorization metadata (expected 'Bearer <token>')")
        if not hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return self._deny(continuation(details), "wrong bearer token")
        return continuation(details)

    @staticmethod
    def _deny(handler, message: str):
        def abort(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if handler is None:
            return None
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(abort)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(abort)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(abort)
        return grpc.unary_unary_rpc_method_handler(abort)


# -- the server ------------------------------------------------------------------------------------------------

class Server:
    """A started server: `port`, `stop(grace)`, `wait()`. Build with `start(config)`."""

    def __init__(self, grpc_server, port: int, health_servicer, service: SearchService, store, models):
        self.grpc_server, self.port = grpc_server, port
        self.health, self.service, self.store, self.models = health_servicer, service, store, models
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within `grace` seconds, release models and the store."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self.health.enter_graceful_shutdown()
            self.grpc_server.stop(grace).wait()
            self.models.close()
            self.store.close()
            self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()


def start(config: ServerConfig, *, store=None, models: Models | None = None) -> Server:
    from indexer.store import Store

    config.check()
    store = store or Store.open(config.data_dir, config.db)
    models = models or Models(batching=config.batching, max_batch=config.batch_max,
                              max_wait_ms=config.batch_wait_ms, device=config.device, allow=config.allow_models)
    for name in config.preload:
        models.dual(name, trusted=True)
    limit = config.max_message_bytes
    interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="mmsearch-rpc"),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                 ("grpc.so_reuseport", 0)])
    service = SearchService(store, models, config)
    pb_grpc.add_SearchServiceServicer_to_server(service, grpc_server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        grpc_server)
    if config.tls_cert:
        with open(config.tls_cert, "rb") as fh:
            cert = fh.read()
        with open(config.tls_key, "rb") as fh:
            key = fh.read()
        port = grpc_server.add_secure_port(config.address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = grpc_server.add_insecure_port(config.address)
    if port == 0:
        raise InvalidInput(f"cannot listen on {config.address} (in use, or not a HOST:PORT address)")
    grpc_server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Server(grpc_server, port, health_servicer, service, store, models)


def serve(config: ServerConfig, *, announce=print) -> int:
    """Run until SIGTERM / SIGINT, then drain in-flight calls and return 0."""
    server = start(config)
    host = config.address.rsplit(":", 1)[0]
    scheme = "TLS" if config.tls_cert else "plaintext"
    announce(f"mmsearch serving on {host}:{server.port} ({scheme}, auth {'on' if config.token else 'off'}, "
             f"data {server.store.data_dir})", flush=True)

    def on_signal(signum, _frame):
        log.info("signal %d: draining (up to %.0fs)", signum, config.drain_seconds)
        threading.Thread(target=server.stop, args=(config.drain_seconds,), name="mmsearch-drain").start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    announce("mmsearch server stopped", flush=True)
    return 0


if __name__ == "__main__":  # python -m search.server [config.toml]
    logging.basicConfig(level=logging.INFO)
    sys.exit(serve(ServerConfig.from_file(sys.argv[1]) if len(sys.argv) > 1 else ServerConfig()))
