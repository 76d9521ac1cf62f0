"""The gRPC transport: mmsearch.v1.SearchService as a thin layer over search/service.py.

Each method converts the request message into a service call and the result back, nothing more. `_rpc`
gives every call a deadline (the client's, or the server's default_deadline_s for calls that carry none, as
grpcurl and most generated clients send them) and turns every error into a status: a typed error
(mmsearch.errors) into its own status and message; anything else into INTERNAL with a generic message
(the details go to the log only, so no SQL, parameters or paths leak to clients).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2

from mmsearch.errors import MMSearchError, Unauthenticated
from protos.mmsearch.v1 import search_pb2 as pb
from protos.mmsearch.v1 import search_pb2_grpc as pb_grpc
from search.auth import TokenCheck
from search.pipeline import Query
from search.service import CollectionInfo, Service, UpsertInput

log = logging.getLogger("mmsearch.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
NO_DEADLINE = 1e9  # seconds: what time_remaining() reports for a call without a deadline is far beyond this


def status_code(exc: MMSearchError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.grpc_status, grpc.StatusCode.INTERNAL)


def call_deadline(context, default_s: float) -> float:
    """The call's deadline as a time.monotonic() instant: the client's, else now + default_s."""
    left = context.time_remaining()
    if left is None or left >= NO_DEADLINE:
        left = default_s
    return time.monotonic() + left


def _rpc(method: Callable) -> Callable:
    """Run a servicer method with its deadline; turn every error into a status with a message."""
    name = method.__name__

    def wrapper(self, request, context):
        deadline = call_deadline(context, self.service.config.default_deadline_s)
        started, status = time.perf_counter(), None
        try:
            return method(self, request, context, deadline)
        except MMSearchError as exc:
            code = status_code(exc)
            status = code.name
            if code == grpc.StatusCode.INTERNAL:
                log.error("%s failed: %s", name, exc)
            context.abort(code, f"{name}: {exc.brief()}")
        except Exception as exc:  # a bug: log it, answer without internals, keep serving
            if isinstance(exc, grpc.RpcError) or context.code() is not None:
                raise  # already aborted
            status = "INTERNAL"
            log.exception("%s crashed", name)
            context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error ({type(exc).__name__}); "
                                                    f"the server log has the details")
        finally:
            if self.observe is not None:
                self.observe("grpc", name, status, time.perf_counter() - started)

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


def _info(info: CollectionInfo) -> pb.CollectionInfo:
    return pb.CollectionInfo(name=info.name, model=info.model, model_digest=info.model_digest, dim=info.dim,
                             items=info.items, index=info.index, indexed=info.indexed, text_fields=info.text_fields)


# -- the servicer ------------------------------------------------------------------------------------------

class SearchServicer(pb_grpc.SearchServiceServicer):
    """`observe(transport, method, status or None, seconds)` is called after every call (metrics)."""

    def __init__(self, service: Service, observe: Callable | None = None):
        self.service, self.observe = service, observe

    @_rpc
    def Search(self, request: pb.SearchRequest, context, deadline):
        kind = request.WhichOneof("query")
        query = Query(
            collection=request.collection,
            text=request.text if kind == "text" else None,
            image=request.image if kind == "image" else None,
            vector=list(request.vector.values) if kind == "vector" else None,
            item_id=request.item_id if kind == "item_id" else None,
            top_k=request.top_k, filter=request.filter, rerank_model=request.rerank.model,
            rerank_depth=request.rerank.depth, rerank_text=request.rerank_text, caption_model=request.caption_model,
            include_metadata=request.include_metadata, include_caption=request.include_caption,
            include_vector=request.include_vector, nprobe=request.nprobe, ef=request.ef_search, offset=request.offset,
            min_score=request.min_score if request.HasField("min_score") else None,
            min_rerank_probability=(request.min_rerank_probability if request.HasField("min_rerank_probability")
                                    else None),
            include_regions=request.include_regions, ask=request.ask, ask_model=request.ask_model,
            local_only=request.local_only, allow_partial=request.allow_partial, keywords=request.keywords)
        result = self.service.search(query, deadline)
        response = pb.SearchResponse(filter_strategy=result.filter_strategy, candidates=result.candidates,
                                     timing=pb.Timing(**result.timing), next_offset=result.next_offset,
                                     missing_shards=result.missing_shards, score_kind=result.score_kind)
        for hit in result.hits:
            out = response.hits.add(id=hit.id, uri=hit.uri, score=hit.score, width=hit.width, height=hit.height,
                                    sha256=hit.sha256)
            if hit.rerank_score is not None:
                out.rerank_score = hit.rerank_score
            if hit.vector_score is not None:
                out.vector_score = hit.vector_score
            if hit.keyword_score is not None:
                out.keyword_score = hit.keyword_score
            if hit.metadata is not None:
                out.metadata.CopyFrom(dict_to_struct(hit.metadata))
            if hit.caption:
                out.caption = hit.caption
            if hit.vector is not None:
                out.vector.CopyFrom(_vector(hit.vector))
            if hit.answer is not None:
                out.answer = hit.answer
            if hit.region is not None:
                r = hit.region
                out.region.CopyFrom(pb.Region(mask_png=r.mask_png, view_left=r.view[0], view_top=r.view[1],
                                              view_right=r.view[2], view_bottom=r.view[3], x0=r.box[0], y0=r.box[1],
                                              x1=r.box[2], y1=r.box[3], score=r.score, coverage=r.coverage))
        return response

    @_rpc
    def Embed(self, request: pb.EmbedRequest, context, deadline):
        result = self.service.embed(collection=request.collection, model=request.model, texts=list(request.texts),
                                    images=[bytes(b) for b in request.images], deadline=deadline)
        response = pb.EmbedResponse(dim=result.dim, model=result.model)
        response.text_vectors.extend(_vector(v) for v in result.text_vectors)
        response.image_vectors.extend(_vector(v) for v in result.image_vectors)
        return response

    @_rpc
    def Rerank(self, request: pb.RerankRequest, context, deadline):
        probs = self.service.rerank(model=request.model, image=bytes(request.image), texts=list(request.texts),
                                    deadline=deadline)
        return pb.RerankResponse(probabilities=probs.tolist())

    @_rpc
    def Caption(self, request: pb.CaptionRequest, context, deadline):
        captions = self.service.caption(model=request.model, images=[bytes(b) for b in request.images],
                                        prompt=request.prompt, max_new_tokens=request.max_new_tokens,
                                        num_beams=request.num_beams, deadline=deadline)
        return pb.CaptionResponse(captions=captions)

    @_rpc
    def Ask(self, request: pb.AskRequest, context, deadline):
        answers = self.service.ask(model=request.model, question=request.question, images=list(request.images),
                                   collection=request.collection, item_ids=list(request.item_ids),
                                   max_new_tokens=request.max_new_tokens, num_beams=request.num_beams,
                                   deadline=deadline)
        return pb.AskResponse(answers=answers)

    @_rpc
    def Upsert(self, request_iterator, context, deadline):
        def stream():
            for message in request_iterator:
                item = message.item
                yield message.collection, UpsertInput(uri=item.uri, image=bytes(item.image),
                                                      metadata=struct_to_dict(item.metadata), caption=item.caption,
                                                      vector=list(item.vector) or None)

        result = self.service.upsert(stream(), deadline)
        response = pb.UpsertResponse(upserted=result.upserted, failed=result.failed)
        for s in result.statuses:
            code = getattr(grpc.StatusCode, s.status, grpc.StatusCode.INTERNAL)
            response.statuses.add(index=s.index, uri=s.uri, ok=s.ok, id=s.id, error=s.error,
                                  code=0 if s.ok else code.value[0])
        return response

    @_rpc
    def Delete(self, request: pb.DeleteRequest, context, deadline):
        return pb.DeleteResponse(deleted=self.service.delete(request.collection, list(request.ids)))

    @_rpc
    def Get(self, request: pb.GetRequest, context, deadline):
        response = pb.GetResponse()
        for row in self.service.get(request.collection, list(request.ids), include_vector=request.include_vector):
            item = response.items.add(id=row.id, uri=row.uri, sha256=row.sha256, width=row.width or 0,
                                      height=row.height or 0, caption=row.caption or "",
                                      metadata=dict_to_struct(row.meta))
            if request.include_vector:
                item.vector.CopyFrom(_vector(row.vector_array()))
        return response

    @_rpc
    def CreateCollection(self, request: pb.CreateCollectionRequest, context, deadline):
        return _info(self.service.create_collection(request.name, request.model, request.index,
                                                    text_fields=list(request.text_fields)))

    @_rpc
    def ListCollections(self, request, context, deadline):
        return pb.ListCollectionsResponse(collections=[_info(i) for i in self.service.list_collections()])

    @_rpc
    def DropCollection(self, request: pb.DropCollectionRequest, context, deadline):
        self.service.drop_collection(request.name)
        return pb.DropCollectionResponse()

    @_rpc
    def CollectionStats(self, request: pb.CollectionStatsRequest, context, deadline):
        return _info(self.service.collection_stats(request.name))


# -- auth --------------------------------------------------------------------------------------------------

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Every call outside health and reflection needs `authorization: Bearer <token>` metadata."""

    def __init__(self, token: str, observe: Callable | None = None):
        self._check = TokenCheck(token)
        self.observe = observe  # as SearchServicer's, for the calls refused here

    def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_METHOD_PREFIXES):
            return continuation(details)
        try:
            self._check.check(dict(details.invocation_metadata or ()).get("authorization"))
        except Unauthenticated as exc:
            return self._deny(continuation(details), str(exc), details.method.rsplit("/", 1)[-1])
        return continuation(details)

    def _deny(self, handler, message: str, name: str):
        def abort(request, context):
            if self.observe is not None:
                self.observe("grpc", name, "UNAUTHENTICATED", 0.0)
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


def add_to_server(service: Service, grpc_server, observe: Callable | None = None) -> SearchServicer:
    servicer = SearchServicer(service, observe)
    pb_grpc.add_SearchServiceServicer_to_server(servicer, grpc_server)
    return servicer

