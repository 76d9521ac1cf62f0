"""Fan-out over shards: a collection bigger than one machine's memory, split by item id over N servers.

Every shard server runs with `shard = "I/N"` (its FAISS indices hold only the items with id % N == I; the
catalog, shared by all, holds everything) and with `shards = [address of shard 0, ..., shard N-1]`. A
Search sent to any of them encodes the query once, asks every shard for its own first-stage top-k (the
same filter and index settings; its own share answered in-process), merges the lists by score (ties by
id), then fetches rows, reranks, finds regions, answers and captions once, on the merged candidates. With
exact (flat) indices the merged top-k is exactly a single node's.

A shard that fails or does not answer before the deadline fails the Search with UNAVAILABLE naming it, or,
when the request allows partial results, is left out and listed in `missing_shards`.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from mmsearch.errors import InvalidInput, Unavailable

log = logging.getLogger("mmsearch.shards")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """ "I/N" -> (I, N); None for no sharding."""
    if text in (None, ""):
        return None
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise InvalidInput(f"shard must look like I/N (e.g. 0/3), got {text!r}") from None
    if not 0 <= i < n:
        raise InvalidInput(f"shard {text}: need 0 <= I < N")
    return i, n


class FirstStageHit:
    __slots__ = ("id", "score")

    def __init__(self, id: int, score: float):
        self.id, self.score = int(id), float(score)


class ShardFanout:
    """The first stage over every shard; this server's own share (when it is one of the shards) is answered by
    the `local` callable handed to first_stage."""

    def __init__(self, addresses: Sequence[str], own: int | None, *, token: str | None, max_message_mb: float = 64.0):
        from search.client import SearchClient

        if not addresses:
            raise InvalidInput("shards: give the address of every shard, in shard order")
        if own is not None and own >= len(addresses):
            raise InvalidInput(f"this server is shard {own} but only {len(addresses)} shard addresses are given")
        self.addresses = list(addresses)
        self.own = own
        self.clients = {i: SearchClient(a, token=token, retries=1, timeout=None, max_message_mb=max_message_mb)
                        for i, a in enumerate(self.addresses) if i != own}
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(self.clients)), thread_name_prefix="mmsearch-fanout")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for client in self.clients.values():
            client.close()

    def _ask(self, i: int, collection: str, vector: np.ndarray, k: int, query, deadline: float) -> list:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unavailable("the deadline passed before the shard was asked")
        response = self.clients[i].search(collection, vector=vector, top_k=k, filter=query.filter or "",
                                          nprobe=query.nprobe, ef_search=query.ef, local_only=True, timeout=left)
        return [FirstStageHit(h.id, h.score) for h in response.hits]

    def first_stage(self, collection: str, vector: np.ndarray, k: int, query, deadline: float | None,
                    local: Callable[[], tuple[list, str]]) -> tuple[list, str, list[int]]:
        """(merged top-k hits, strategy, shards left out); `local()` gives this server's own share."""
        import grpc

        deadline = deadline if deadline is not None else time.monotonic() + 60.0
        futures = {i: self.pool.submit(self._ask, i, collection, vector, k, query, deadline) for i in self.clients}
        merged: list = []
        strategy = "fanout"
        if self.own is not None:
            hits, local_strategy = local()
            merged.extend(FirstStageHit(h.id, h.score) for h in hits)
            strategy = f"fanout/{local_strategy}"
        missing: list[int] = []
        for i, future in futures.items():
            try:
                merged.extend(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except Exception as exc:  # noqa: BLE001 - every failure of one shard is reported the same way
                if isinstance(exc, grpc.RpcError) and exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                                                    grpc.StatusCode.NOT_FOUND):
                    from mmsearch.errors import error_for_status

                    raise error_for_status(exc.code().name)(f"shard {i}: {exc.details()}") from None
                why = exc.details() if isinstance(exc, grpc.RpcError) else (str(exc) or type(exc).__name__)
                if not query.allow_partial:
                    raise Unavailable(f"shard {i}/{len(self.addresses)} at {self.addresses[i]} did not answer "
                                      f"({why}); retry, or allow partial results") from None
                log.warning("shard %d (%s) left out: %s", i, self.addresses[i], why)
                missing.append(i)
        merged.sort(key=lambda h: (-h.score, h.id))
        return merged[:k], strategy, missing

