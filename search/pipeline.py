"""Two-stage retrieval: encode the query -> ANN (filtered) -> fetch rows -> ITM rerank -> captions.

    store = Store.open(data_dir)
    models = Models(batching=True)            # each model loaded once, shared by every collection using it
    searcher = Searcher(store, models)
    result = searcher.search(Query(collection="photos", text="a red bicycle", top_k=10,
                                   filter='meta.license = "cc0"', rerank_model="path/to/blip-itm"))

Filtering: the filter runs in SQL first, asking for at most `selector_max_ids + 1` matching ids. When no
more match (a selective filter), the ANN search is restricted to exactly those ids, so the top-k is full
whenever at least k items match. Otherwise (an unselective filter) the ANN search over-fetches and the
candidates are checked against the filter in SQL, fetching deeper until k survive; if even the deepest
fetch comes back short, the search falls back to the full id restriction.

Reranking follows BLIP / BLIP-2: ITM on the top `depth` first-stage candidates (default 128, at most 256,
never fewer than top_k when top_k fits in that cap), final order by ITM probability, ties by first-stage
score; both scores are returned. Candidates whose image cannot be read keep only their first-stage score
and follow the reranked ones.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mmsearch.errors import DeadlineExceeded, InvalidInput, NotFound
from indexer.catalog import Item, ItemRow
from search import filters
from search.batching import BatchedEncoder

log = logging.getLogger("mmsearch.search")

MAX_TOP_K = 10_000
DEFAULT_RERANK_DEPTH = 128
MAX_RERANK_DEPTH = 256
SELECTOR_MAX_IDS = 20_000
RERANK_CHUNK = 32
CANDIDATE_IMAGE_DRAFT = (384, 384)  # decode JPEG candidates no larger than the rerankers need


# -- models ---------------------------------------------------------------------------------------------

class Models:
    """Encoders, rerankers and captioners by name, each loaded once (on first use) and shared.

    Dual encoders are wrapped in a BatchedEncoder so concurrent requests share model calls. `allow`, when
    given, is the set of model names requests may load (collections' own encoders are always allowed)."""

    def __init__(self, *, batching: bool = True, max_batch: int = 32, max_wait_ms: float = 2.0,
                 device: str = "cpu", dtype: str | None = None, allow: Sequence[str] | None = None):
        self.batching, self.max_batch, self.max_wait_ms = batching, max_batch, max_wait_ms
        self.device, self.dtype = device, dtype
        self.allow = None if allow is None else set(allow)
        self._cache: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def _get(self, kind: str, name: str, loader, *, trusted: bool = False):
        if not name or not name.strip():
            raise InvalidInput(f"{kind} model name is empty")
        if not trusted and self.allow is not None and name not in self.allow:
            raise InvalidInput(f"model {name!r} is not served here; allowed: {', '.join(sorted(self.allow)) or 'none'}")
        key = (kind, name)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one load per model even when many requests ask at once
            if key not in self._cache:
                log.info("loading %s model %s", kind, name)
                self._cache[key] = loader(name)
                _freeze_long_lived()
            return self._cache[key]

    def dual(self, name: str, *, trusted: bool = False) -> BatchedEncoder:
        import encoders

        def load(n):
            return BatchedEncoder(encoders.load(n, device=self.device, dtype=self.dtype), enabled=self.batching,
                                  max_batch=self.max_batch, max_wait_ms=self.max_wait_ms)
        return self._get("dual", name, load, trusted=trusted)

    def for_collection(self, handle) -> BatchedEncoder:
        enc = self.dual(handle.row.encoder_name, trusted=True)
        handle.check_encoder(enc)
        return enc

    def reranker(self, name: str):
        import encoders

        return self._get("rerank", name, lambda n: encoders.load_reranker(n, device=self.device, dtype=self.dtype))

    def captioner(self, name: str):
        import encoders

        return self._get("caption", name, lambda n: encoders.load_captioner(n, device=self.device, dtype=self.dtype))

    def loaded(self) -> list[str]:
        with self._lock:
            return [f"{kind}:{name}" for kind, name in self._cache]

    def close(self) -> None:
        with self._lock:
            models = list(self._cache.values())
        for model in models:
            if isinstance(model, BatchedEncoder):
                model.close()
                stats = model.stats
                for kind in ("text", "image"):
                    if stats.get(f"{kind}_batches"):
                        log.info("%s %s batches: %d for %d inputs (mean %.1f), model busy %.1f s", model.name, kind,
                                 stats[f"{kind}_batches"], stats[f"{kind}_inputs"],
                                 stats[f"{kind}_inputs"] / stats[f"{kind}_batches"], stats[f"{kind}_busy_s"])


def _freeze_long_lived() -> None:
    """Take everything alive now (a model just loaded: modules, tokenizer tables) out of the cyclic
    collector's reach. Left in, every full collection walks them: ~350k objects and 200 ms with a base
    SigLIP loaded, the GIL held all along, so every request in flight stalls."""
    gc.collect()
    gc.freeze()


# -- requests and results -------------------------------------------------------------------------------

@dataclass
class Query:
    collection: str
    text: str | None = None
    image: bytes | None = None
    vector: Sequence[float] | np.ndarray | None = None
    item_id: int | None = None
    top_k: int = 10
    filter: str = ""
    rerank_model: str = ""
    rerank_depth: int = 0
    rerank_text: str = ""
    caption_model: str = ""
    include_metadata: bool = False
    include_caption: bool = False
    include_vector: bool = False
    nprobe: int = 0
    ef: int = 0


@dataclass
class Hit:
    id: int
    uri: str
    score: float
    rerank_score: float | None = None
    metadata: dict | None = None
    caption: str | None = None
    vector: np.ndarray | None = None
    width: int = 0
    height: int = 0


@dataclass
class SearchResult:
    hits: list[Hit]
    timing: dict[str, float] = field(default_factory=dict)   # milliseconds per stage
    filter_strategy: str = "none"                            # "none" | "id_selector" | "post_filter"
    candidates: int = 0


# -- helpers ----------------------------------------------------------------------------------------------

def check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInput(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return int(top_k)


def remaining(deadline: float | None, stage: str) -> float | None:
    """Seconds left before `deadline` (time.monotonic()); DeadlineExceeded once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"deadline exceeded before {stage}")
    return left


def image_blob_path(data_dir: str, sha256: str) -> str:
    """Where the server keeps the bytes of an upserted image (read back for rerank and captions)."""
    return os.path.join(data_dir, "images", sha256[:2], sha256)


def load_item_image(item: ItemRow, image_dir: str | None = None):
    """An item's image: the local file its uri names, else the copy kept by Upsert under `image_dir`."""
    from encoders.preprocess import load_image

    uri = item.uri[len("file://"):] if item.uri.startswith("file://") else item.uri
    if os.path.isabs(uri) and os.path.exists(uri):
        return load_image(uri, draft_size=CANDIDATE_IMAGE_DRAFT)
    if image_dir is not None and os.path.exists(image_blob_path(image_dir, item.sha256)):
        return load_image(image_blob_path(image_dir, item.sha256), draft_size=CANDIDATE_IMAGE_DRAFT)
    raise InvalidInput(f"item {item.id}: no image file at {item.uri!r}")


def query_vector(query: Query, handle, models: Models, deadline: float | None) -> tuple[np.ndarray, str | None]:
    """The (dim,) query vector and the text to rerank with (None when there is none)."""
    from encoders.preprocess import load_image

    kinds = [k for k, v in (("text", query.text), ("image", query.image), ("vector", query.vector),
                            ("item_id", query.item_id)) if v is not None]
    if not kinds:
        raise InvalidInput("empty query: give a text, an image, a vector or an item id")
    if len(kinds) > 1:
        raise InvalidInput(f"give one query, not {' and '.join(kinds)}")
    rerank_text = (query.rerank_text or "").strip() or None
    if query.text is not None:
        if not query.text.strip():
            raise InvalidInput("empty query: the text is empty")
        enc = models.for_collection(handle)
        vec = enc.encode_texts([query.text], timeout=remaining(deadline, "encoding the query"))[0]
        return vec, rerank_text or query.text
    if query.image is not None:
        if len(query.image) == 0:
            raise InvalidInput("empty query: the image has 0 bytes")
        image = load_image(bytes(query.image))
        enc = models.for_collection(handle)
        return enc.encode_images([image], timeout=remaining(deadline, "encoding the query"))[0], rerank_text
    if query.vector is not None:
        vec = np.asarray(query.vector, dtype=np.float32).reshape(-1)
        if vec.size == 0:
            raise InvalidInput("empty query: the vector has no values")
        if vec.size != handle.dim:
            raise InvalidInput(f"query vector has {vec.size} values; collection {handle.name!r} has dim {handle.dim}")
        if not np.isfinite(vec).all():
            raise InvalidInput("query vector contains NaN or infinity")
        if not np.any(vec):
            raise InvalidInput("query vector is all zeros")
        return vec, rerank_text
    rows = handle.get([int(query.item_id)])
    if int(query.item_id) not in rows:
        raise NotFound(f"item {query.item_id} is not in collection {handle.name!r}")
    return rows[int(query.item_id)].vector_array().copy(), rerank_text


# -- the searcher -------------------------------------------------------------------------------------------

class Searcher:
    """Runs queries against one Store with one Models registry. Thread-safe."""

    def __init__(self, store, models: Models, *, default_depth: int = DEFAULT_RERANK_DEPTH,
                 max_depth: int = MAX_RERANK_DEPTH, selector_max_ids: int = SELECTOR_MAX_IDS):
        self.store, self.models = store, models
        self.image_dir = store.data_dir
        self.default_depth, self.max_depth = default_depth, max_depth
        self.selector_max_ids = selector_max_ids

    def search(self, query: Query, deadline: float | None = None) -> SearchResult:
        t_start = time.perf_counter()
        timing = dict.fromkeys(("encode_ms", "filter_ms", "ann_ms", "fetch_ms", "rerank_ms", "caption_ms"), 0.0)
        top_k = check_top_k(query.top_k)
        for name, value in (("nprobe", query.nprobe), ("ef_search", query.ef)):
            if value < 0:
                raise InvalidInput(f"{name} must be >= 0 (0 = index default), got {value}")
        if query.rerank_depth < 0:
            raise InvalidInput(f"rerank depth must be >= 0 (0 = default {self.default_depth}), got {query.rerank_depth}")
        where_ast = filters.parse(query.filter or "")  # bad filters fail before any model work
        handle, revision = self.store.collection_at(query.collection)  # the revision: no re-read after encoding
        reranker = self.models.reranker(query.rerank_model) if query.rerank_model else None

        t = time.perf_counter()
        vector, rerank_text = query_vector(query, handle, self.models, deadline)
        timing["encode_ms"] = _ms(t)
        if reranker is not None and rerank_text is None:
            raise InvalidInput("reranking needs a text: set rerank_text when the query is an image, vector or item")

        depth = 0
        if reranker is not None:
            depth = min(query.rerank_depth or self.default_depth, self.max_depth)
            depth = max(depth, min(top_k, self.max_depth))
        k1 = min(max(top_k, depth) + (1 if query.item_id is not None else 0), MAX_TOP_K)
        remaining(deadline, "the index search")
        found, strategy = self._first_stage(handle, vector, k1, where_ast, query, timing, revision)
        if query.item_id is not None:
            found = [h for h in found if h.id != int(query.item_id)]
        found = found[:max(top_k, depth)]

        t = time.perf_counter()
        rows = handle.get([h.id for h in found], with_vectors=query.include_vector)
        hits = [_hit(h, rows[h.id]) for h in found if h.id in rows]  # a row deleted meanwhile is skipped
        timing["fetch_ms"] = _ms(t)

        if reranker is not None and hits:
            t = time.perf_counter()
            hits = self._rerank(reranker, rerank_text, hits, rows, depth, deadline)
            timing["rerank_ms"] = _ms(t)
        hits = hits[:top_k]

        for hit in hits:
            row = rows[hit.id]
            if query.include_metadata:
                hit.metadata = dict(row.meta or {})
            if query.include_caption or query.caption_model:
                hit.caption = row.caption or ""
            if query.include_vector:
                hit.vector = row.vector_array().copy()
        if query.caption_model:
            t = time.perf_counter()
            self._caption(query.caption_model, [h for h in hits if not h.caption], rows, deadline)
            timing["caption_ms"] = _ms(t)
        timing["total_ms"] = _ms(t_start)
        return SearchResult(hits=hits, timing=timing, filter_strategy=strategy, candidates=len(found))

    # -- stages --

    def _first_stage(self, handle, vector, k: int, where_ast, query: Query, timing, revision) -> tuple[list, str]:
        opts = dict(nprobe=query.nprobe or None, ef=query.ef or None, revision=revision)
        if where_ast is None:
            t = time.perf_counter()
            hits = handle.search(vector, k, **opts)[0]
            timing["ann_ms"] += _ms(t)
            return hits, "none"
        where = filters.to_sql(where_ast, Item, handle.catalog.dialect)
        t = time.perf_counter()
        ids = handle.catalog.select_ids(handle.id, where, limit=self.selector_max_ids + 1)
        timing["filter_ms"] += _ms(t)
        if len(ids) <= self.selector_max_ids:
            t = time.perf_counter()
            hits = handle.search(vector, k, ids=ids, **opts)[0]
            timing["ann_ms"] += _ms(t)
            return hits, "id_selector"
        # Unselective: at least selector_max_ids + 1 items match; over-fetch and check candidates in SQL.
        fetch = min(MAX_TOP_K, max(4 * k, 64))
        while True:
            t = time.perf_counter()
            candidates = handle.search(vector, fetch, **opts)[0]
            timing["ann_ms"] += _ms(t)
            t = time.perf_counter()
            keep = set(handle.catalog.select_ids(handle.id, where, ids=[h.id for h in candidates]).tolist())
            timing["filter_ms"] += _ms(t)
            kept = [h for h in candidates if h.id in keep]
            if len(kept) >= k or len(candidates) < fetch:  # enough, or the whole index was seen
                return kept[:k], "post_filter"
            if fetch >= MAX_TOP_K:
                break
            fetch = min(MAX_TOP_K, fetch * 4)
        t = time.perf_counter()
        hits = handle.search(vector, k, where=where, **opts)[0]  # rare: matches are many but far from the query
        timing["ann_ms"] += _ms(t)
        return hits, "post_filter"

    def _rerank(self, reranker, text: str, hits: list[Hit], rows, depth: int, deadline) -> list[Hit]:
        head, tail = hits[:depth], hits[depth:]
        scored, unscored, images = [], [], []
        for hit in head:
            try:
                images.append(load_item_image(rows[hit.id], self.image_dir))
                scored.append(hit)
            except InvalidInput as exc:  # ImageError is an InvalidInput
                log.warning("rerank: skipping item %d: %s", hit.id, exc)
                unscored.append(hit)
        for i in range(0, len(scored), RERANK_CHUNK):
            remaining(deadline, "reranking")
            probs = reranker.score(images[i:i + RERANK_CHUNK], [text] * len(images[i:i + RERANK_CHUNK]))
            for hit, p in zip(scored[i:i + RERANK_CHUNK], probs):
                hit.rerank_score = float(p)
        scored.sort(key=lambda h: (-h.rerank_score, -h.score, h.id))
        return scored + unscored + tail

    def _caption(self, model: str, hits: list[Hit], rows, deadline) -> None:
        captioner = self.models.captioner(model)
        for hit in hits:
            remaining(deadline, "captioning")
            try:
                image = load_item_image(rows[hit.id], self.image_dir)
            except InvalidInput as exc:
                log.warning("caption: skipping item %d: %s", hit.id, exc)
                continue
            hit.caption = captioner.caption([image])[0]


def _hit(first_stage, row: ItemRow) -> Hit:
    return Hit(id=int(first_stage.id), uri=row.uri, score=float(first_stage.score), width=int(row.width or 0),
               height=int(row.height or 0))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
