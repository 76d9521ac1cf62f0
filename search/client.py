"""A typed Python client for mmsearch.v1.SearchService.

    from search.client import SearchClient
    with SearchClient("127.0.0.1:50051", token=None) as client:
        client.create_collection("photos", model="google/siglip-base-patch16-224")
        client.upsert("photos", [{"image": open("cat.jpg", "rb").read(), "uri": "cat.jpg", "metadata": {"tag": "cat"}}])
        response = client.search("photos", text="a cat", top_k=5, filter='meta.tag = "cat"')
        for hit in response.hits:
            print(hit.id, hit.uri, hit.score)

Several replicas: `SearchClient("10.0.0.1:50051,10.0.0.2:50051")` or `SearchClient("dns:///search:50051")`.

Every call returns the response message (see protos/mmsearch/v1/search_pb2.pyi for fields) or raises
grpc.RpcError carrying the server's status code and message. Calls that fail with UNAVAILABLE (server
restarting, connection reset) are retried with exponential backoff within the call's timeout. Upsert is
retried only when `items` is a sequence, since a consumed iterator cannot be sent again; it is safe to
repeat because items are keyed by uri.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from typing import Any, Callable, TypeVar

import grpc
import numpy as np
from google.protobuf import struct_pb2

from mmsearch.errors import InvalidInput
from protos.mmsearch.v1 import search_pb2 as pb
from protos.mmsearch.v1 import search_pb2_grpc as pb_grpc

T = TypeVar("T")
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE,)


def channel_target(target: str | Sequence[str]) -> str:
    """A gRPC target for one server or several replicas: "host:port", "host1:port,host2:port" (or a list),
    or a name with a scheme ("dns:///search.internal:50051", whose A records are the replicas)."""
    addresses = [t.strip() for t in ([target] if isinstance(target, str) else list(target)) for t in t.split(",")]
    addresses = [a for a in addresses if a]
    if not addresses:
        raise InvalidInput("no server address given")
    if len(addresses) == 1:
        return addresses[0]
    if any("://" in a or a.startswith(("ipv4:", "ipv6:", "unix:")) for a in addresses):
        raise InvalidInput(f"give several plain host:port addresses or one name with a scheme, not {addresses}")
    hosts = [a.rsplit(":", 1)[0].strip("[]") for a in addresses]
    if all(_is_ipv4(h) for h in hosts):
        return "ipv4:" + ",".join(addresses)
    if all(":" in h for h in hosts):
        return "ipv6:" + ",".join(addresses)
    raise InvalidInput("several addresses must be IP:port (use a DNS name with dns:/// for host names)")


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


class SearchClient:
    """`target`: one address, several replicas (comma-separated or a list), or a dns:/// name. Calls are
    spread over the replicas by gRPC's round_robin policy; a call that fails with UNAVAILABLE (a replica
    going away) is retried, and the retry goes to another replica."""

    def __init__(self, target: str | Sequence[str], *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, timeout: float | None = 60.0, retries: int = 4,
                 backoff: float = 0.1, max_message_mb: float = 64.0, channel: grpc.Channel | None = None):
        limit = int(max_message_mb * 1024 * 1024)
        # Reconnect quickly so retries on UNAVAILABLE meet a server that has just come back.
        options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 2000), ("grpc.lb_policy_name", "round_robin")]
        target = channel_target(target)
        if channel is not None:
            self.channel = channel
        elif tls or root_certificates:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.SearchServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None, *, retry: bool = True) -> T:
        timeout = self.timeout if timeout is None else timeout
        end = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                return method(request() if callable(request) else request, timeout=left, metadata=self.metadata)
            except grpc.RpcError as exc:
                attempt += 1
                if not retry or exc.code() not in RETRY_CODES or attempt > self.retries:
                    raise
                pause = self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
                if end is not None and time.monotonic() + pause >= end:
                    raise
                time.sleep(pause)

    # -- search and models --

    def search(self, collection: str, *, text: str | None = None, image: bytes | None = None,
               vector: Sequence[float] | np.ndarray | None = None, item_id: int | None = None, top_k: int = 10,
               filter: str = "", rerank_model: str = "", rerank_depth: int = 0, rerank_text: str = "",
               caption_model: str = "", include_metadata: bool = False, include_caption: bool = False,
               include_vector: bool = False, nprobe: int = 0, ef_search: int = 0, offset: int = 0,
               min_score: float | None = None, min_rerank_probability: float | None = None,
               include_regions: bool = False, ask: str = "", ask_model: str = "", local_only: bool = False,
               allow_partial: bool = False, keywords: str = "", timeout: float | None = None) -> pb.SearchResponse:
        """One page of hits; the next page is `offset=response.next_offset` (0 in the response: no more)."""
        request = pb.SearchRequest(collection=collection, top_k=top_k, filter=filter, offset=offset,
                                   rerank=pb.RerankOptions(model=rerank_model, depth=rerank_depth),
                                   rerank_text=rerank_text, caption_model=caption_model,
                                   include_metadata=include_metadata, include_caption=include_caption,
                                   include_vector=include_vector, nprobe=nprobe, ef_search=ef_search,
                                   include_regions=include_regions, ask=ask, ask_model=ask_model,
                                   local_only=local_only, allow_partial=allow_partial, keywords=keywords)
        if min_score is not None:
            request.min_score = min_score
        if min_rerank_probability is not None:
            request.min_rerank_probability = min_rerank_probability
        if text is not None:
            request.text = text
        elif image is not None:
            request.image = image
        elif vector is not None:
            request.vector.values.extend(np.asarray(vector, dtype=np.float32).reshape(-1).tolist())
        elif item_id is not None:
            request.item_id = item_id
        return self._call(self.stub.Search, request, timeout)

    def embed(self, *, texts: Sequence[str] = (), images: Sequence[bytes] = (), model: str = "",
              collection: str = "", timeout: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(text vectors (n, dim), image vectors (m, dim)) as float32 arrays."""
        response = self._call(self.stub.Embed, pb.EmbedRequest(model=model, collection=collection, texts=list(texts),
                                                                images=list(images)), timeout)
        as_array = lambda vs: np.array([list(v.values) for v in vs], dtype=np.float32).reshape(len(vs), response.dim)  # noqa: E731
        return as_array(response.text_vectors), as_array(response.image_vectors)

    def rerank(self, model: str, image: bytes, texts: Sequence[str], *, timeout: float | None = None) -> np.ndarray:
        response = self._call(self.stub.Rerank, pb.RerankRequest(model=model, image=image, texts=list(texts)), timeout)
        return np.asarray(response.probabilities, dtype=np.float32)

    def caption(self, model: str, images: Sequence[bytes], *, prompt: str = "", max_new_tokens: int = 0,
                num_beams: int = 0, timeout: float | None = None) -> list[str]:
        request = pb.CaptionRequest(model=model, images=list(images), prompt=prompt, max_new_tokens=max_new_tokens,
                                    num_beams=num_beams)
        return list(self._call(self.stub.Caption, request, timeout).captions)

    def ask(self, model: str, question: str, *, images: Sequence[bytes] = (), collection: str = "",
            item_ids: Sequence[int] = (), max_new_tokens: int = 0, num_beams: int = 0,
            timeout: float | None = None) -> list[str]:
        """Answers to `question` about each image, then each item of `collection`."""
        request = pb.AskRequest(model=model, question=question, images=list(images), collection=collection,
                                item_ids=list(item_ids), max_new_tokens=max_new_tokens, num_beams=num_beams)
        return list(self._call(self.stub.Ask, request, timeout).answers)

    # -- items --

    @staticmethod
    def _item(item: pb.UpsertItem | dict) -> pb.UpsertItem:
        if isinstance(item, pb.UpsertItem):
            return item
        metadata = struct_pb2.Struct()
        if item.get("metadata"):
            metadata.update(item["metadata"])
        vector = item.get("vector")
        return pb.UpsertItem(uri=item.get("uri", ""), image=item.get("image", b""), metadata=metadata,
                             caption=item.get("caption", ""), vector=[] if vector is None else list(map(float, vector)))

    def upsert(self, collection: str, items: Iterable[pb.UpsertItem | dict], *,
               timeout: float | None = None) -> pb.UpsertResponse:
        """Stream items (UpsertItem or dicts with image / uri / metadata / caption / vector) into a collection."""
        def stream():
            for i, item in enumerate(items):
                yield pb.UpsertRequest(collection=collection if i == 0 else "", item=self._item(item))
        return self._call(self.stub.Upsert, stream, timeout, retry=isinstance(items, Sequence))

    def delete(self, collection: str, ids: Sequence[int], *, timeout: float | None = None) -> int:
        return self._call(self.stub.Delete, pb.DeleteRequest(collection=collection, ids=list(ids)), timeout).deleted

    def get(self, collection: str, ids: Sequence[int], *, include_vector: bool = False,
            timeout: float | None = None) -> list[pb.Item]:
        request = pb.GetRequest(collection=collection, ids=list(ids), include_vector=include_vector)
        return list(self._call(self.stub.Get, request, timeout).items)

    # -- collections --

    def create_collection(self, name: str, model: str, *, index: str = "", text_fields: Sequence[str] = (),
                          timeout: float | None = None) -> pb.CollectionInfo:
        return self._call(self.stub.CreateCollection, pb.CreateCollectionRequest(
            name=name, model=model, index=index, text_fields=list(text_fields)), timeout)

    def list_collections(self, *, timeout: float | None = None) -> list[pb.CollectionInfo]:
        return list(self._call(self.stub.ListCollections, pb.ListCollectionsRequest(), timeout).collections)

    def drop_collection(self, name: str, *, timeout: float | None = None) -> None:
        self._call(self.stub.DropCollection, pb.DropCollectionRequest(name=name), timeout)

    def collection_stats(self, name: str, *, timeout: float | None = None) -> pb.CollectionInfo:
        return self._call(self.stub.CollectionStats, pb.CollectionStatsRequest(name=name), timeout)

    def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """The health status name ("SERVING", "NOT_SERVING", ...) from grpc.health.v1."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
