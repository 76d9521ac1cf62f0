"""Two-stage retrieval: encode the query -> ANN (filtered) -> fetch rows -> ITM rerank -> captions.

    store = Store.open(data_dir)
    models = Models(batching=True)            # search/models.py: each model loaded once, shared
    searcher = Searcher(store, models)        # image_roots=, pixel_budget= bound what a server reads
    result = searcher.search(Query(collection="photos", text="a red bicycle", top_k=10,
                                   filter='meta.license = "cc0"', rerank_model="path/to/blip-itm"))

Filtering: the filter runs in SQL first, asking for at most `selector_max_ids + 1` matching ids. When no
more match (a selective filter), the ANN search is restricted to exactly those ids, so the top-k is full
whenever at least k items match. Otherwise (an unselective filter) the ANN search over-fetches and the
candidates are checked against the filter in SQL, fetching deeper until k survive; if even the deepest
fetch comes back short, the search falls back to the full id restriction.

Paging: `offset` skips that many hits of the ranked list; the first stage fetches offset + top_k + 1 (the
extra one says whether `next_offset` is set), so pages of one query over an unchanged collection are slices
of one list. `min_score` cuts first-stage hits below it before paging.

Keywords (search/hybrid.py): alone, the hits are the collection's keyword matches (filtered) ranked by the
catalog's text index; beside a text / image / vector / item, the vector list and the keyword list are fused by
reciprocal rank fusion, and rerank, captions and paging work on the fused list as on the first stage's.
`min_score` is a cosine cut-off: it cuts the vector list before fusion (keyword matches stay) and is refused
for a keyword-only query.

Reranking follows BLIP / BLIP-2: ITM on the top `depth` first-stage candidates (default 128, at most 256,
never fewer than top_k when top_k fits in that cap), final order by ITM probability, ties by first-stage
score; both scores are returned. Candidates whose image cannot be read keep only their first-stage score
and follow the reranked ones. The pixels reranking and captions see are always what the item was made from
(ItemImages); images are decoded lazily, in chunks, under the server's pixel budget (search/limits.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from indexer.catalog import Item, ItemRow
from indexer.files import read_file
from mmsearch.errors import DeadlineExceeded, InvalidInput, MMSearchError, NotFound
from search import filters
from search.hybrid import FUSION_DEPTH, fuse, keyword_hits
from search.limits import PixelBudget, decode_chunks

log = logging.getLogger("mmsearch.search")

MAX_TOP_K = 10_000
DEFAULT_RERANK_DEPTH = 128
MAX_RERANK_DEPTH = 256
# Filters matching up to this many ids restrict the ANN search to them (exact and full); listing them costs
# about 12 ms per 100,000 (catalog.select_ids), less than over-fetching and checking candidates, which for
# compressed kinds re-ranks k * refine vectors per fetch from the catalog (1M items, ivfsq8, 10 %: 160 ms).
SELECTOR_MAX_IDS = 200_000
RERANK_CHUNK = 32
CANDIDATE_IMAGE_DRAFT = (384, 384)  # decode JPEG candidates no larger than the rerankers need


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
    offset: int = 0                  # skip this many of the ranked hits (paging)
    min_score: float | None = None               # drop first-stage hits scoring below this
    min_rerank_probability: float | None = None  # drop reranked hits whose ITM P(match) is below this
    include_regions: bool = False                # GroupViT collections, text queries: where each hit matched
    ask: str = ""                                # a question answered about each hit by ask_model
    ask_model: str = ""
    local_only: bool = False                     # a shard's own share only (what a fan-out asks each shard)
    allow_partial: bool = False                  # fan-out: leave out shards that do not answer
    keywords: str = ""                           # words that must all appear (caption, file name, text fields)


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
    region: Any = None  # search.regions.Region, with include_regions
    answer: str | None = None  # with ask
    sha256: str = ""
    vector_score: float | None = None   # keyword queries: the cosine, when the vector list held the hit
    keyword_score: float | None = None  # keyword queries: the text index's score, when the hit matched


@dataclass
class SearchResult:
    hits: list[Hit]
    timing: dict[str, float] = field(default_factory=dict)   # milliseconds per stage
    filter_strategy: str = "none"                            # "none" | "id_selector" | "post_filter" | "keywords"
    candidates: int = 0
    next_offset: int = 0                                     # the next page's offset; 0: this page is the last
    missing_shards: list[int] = field(default_factory=list)  # fan-out with allow_partial: shards left out
    score_kind: str = "vector"                               # what Hit.score is: "vector" | "keyword" | "rrf"


# -- helpers ----------------------------------------------------------------------------------------------

def check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInput(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return int(top_k)


def check_page(offset: int, top_k: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise InvalidInput(f"offset must be >= 0, got {offset}")
    if offset + top_k > MAX_TOP_K:
        raise InvalidInput(f"offset + top_k must be at most {MAX_TOP_K} (the deepest a search goes), "
                           f"got {offset} + {top_k}")
    return int(offset)


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


class ItemImages:
    """The pixels of stored items, for the stages that need them (rerank, captions): always what the item
    was made from. First the server's own copy of uploaded bytes (content-addressed by the item's
    sha256); else the file the uri names, only when it lies under `roots` (None: any path, for the
    operator's own CLI) and only when its bytes still hash to the item's sha256. So an item uploaded as
    bytes under a made-up uri can never read the file that uri names."""

    def __init__(self, data_dir: str | None, roots: list[str] | None, *, max_bytes: int = 256 << 20):
        from indexer.files import normalize_roots

        self.data_dir = data_dir
        self.roots = None if roots is None else normalize_roots(roots)
        self.max_bytes = max_bytes

    def data(self, item: ItemRow) -> bytes:
        """The image bytes of `item`, or InvalidInput / NotFound saying why there are none."""
        if self.data_dir is not None:
            blob = image_blob_path(self.data_dir, item.sha256)
            if os.path.exists(blob):
                return read_file(blob, max_bytes=self.max_bytes)
        path = item.uri[len("file://"):] if item.uri.startswith("file://") else item.uri
        if not os.path.isabs(path):
            raise NotFound(f"item {item.id}: no stored copy of its image and {item.uri!r} is not a server path")
        data = read_file(path, max_bytes=self.max_bytes, roots=self.roots)
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise InvalidInput(f"item {item.id}: {path} has changed since it was indexed")
        return data


# -- the searcher -------------------------------------------------------------------------------------------

class Searcher:
    """Runs queries against one Store with one Models registry (search/models.py). Thread-safe.

    `image_roots`: folders whose files the rerank / caption stages may read (None: any, for the CLI);
    `pixel_budget`: the server's PixelBudget for decoded images (None: unbounded, for the CLI);
    `max_image_pixels`: one image's limit."""

    def __init__(self, store, models, *, default_depth: int = DEFAULT_RERANK_DEPTH,
                 max_depth: int = MAX_RERANK_DEPTH, selector_max_ids: int = SELECTOR_MAX_IDS,
                 image_roots: list[str] | None = None, pixel_budget: PixelBudget | None = None,
                 max_image_pixels: int | None = 100_000_000):
        self.store, self.models = store, models
        self.images = ItemImages(store.media_dir, image_roots)
        self.default_depth, self.max_depth = default_depth, max_depth
        self.selector_max_ids = selector_max_ids
        self.pixel_budget, self.max_image_pixels = pixel_budget, max_image_pixels
        self.fanout = None  # search.shards.ShardFanout, on a server of a shard set

    def decode(self, blobs, deadline, *, label=lambda i: f"images[{i}]", draft_size=None, on_error=None,
               chunk_count: int = RERANK_CHUNK):
        """Lazily decoded chunks of [(position, image)] under the pixel budget (see search/limits.py)."""
        return decode_chunks(blobs, budget=self.pixel_budget, chunk_pixels=self.max_image_pixels or float("inf"),
                             chunk_count=chunk_count, deadline=deadline, max_image_pixels=self.max_image_pixels,
                             label=label, draft_size=draft_size, on_error=on_error)

    def query_vector(self, query: Query, handle, deadline: float | None) -> tuple[np.ndarray, str | None]:
        """The (dim,) query vector and the text to rerank with (None when there is none)."""
        kinds = _vector_kinds(query)
        if not kinds:
            raise InvalidInput("empty query: give a text, an image, a vector, an item id or keywords")
        if len(kinds) > 1:
            raise InvalidInput(f"give one query, not {' and '.join(kinds)}")
        rerank_text = (query.rerank_text or "").strip() or None
        if query.text is not None:
            if not query.text.strip():
                raise InvalidInput("empty query: the text is empty")
            enc = self.models.for_collection(handle)
            vec = enc.encode_texts([query.text], timeout=remaining(deadline, "encoding the query"))[0]
            return vec, rerank_text or query.text
        if query.image is not None:
            if len(query.image) == 0:
                raise InvalidInput("empty query: the image has 0 bytes")
            enc = self.models.for_collection(handle)
            for chunk in self.decode([(0, bytes(query.image))], deadline, label=lambda _: "query image"):
                vec = enc.encode_images([chunk[0][1]], timeout=remaining(deadline, "encoding the query"))[0]
            return vec, rerank_text
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

    def search(self, query: Query, deadline: float | None = None) -> SearchResult:
        t_start = time.perf_counter()
        timing = dict.fromkeys(("encode_ms", "filter_ms", "ann_ms", "keyword_ms", "fetch_ms", "rerank_ms",
                                "caption_ms", "regions_ms", "ask_ms"), 0.0)
        top_k = check_top_k(query.top_k)
        offset = check_page(query.offset, top_k)
        min_score = query.min_score
        for name, value in (("nprobe", query.nprobe), ("ef_search", query.ef)):
            if value < 0:
                raise InvalidInput(f"{name} must be >= 0 (0 = index default), got {value}")
        if query.rerank_depth < 0:
            raise InvalidInput(f"rerank depth must be >= 0 (0 = default {self.default_depth}), got {query.rerank_depth}")
        _check_thresholds(query)
        keywords = (query.keywords or "").strip()
        if keywords:
            from indexer.text_index import query_terms

            query_terms(keywords)  # too long: refused before any model work
        keyword_only = bool(keywords) and not _vector_kinds(query)
        if keyword_only and min_score is not None:
            raise InvalidInput("min_score is a cut-off on vector similarity; a keyword-only query has none")
        where_ast = filters.parse(query.filter or "")  # bad filters fail before any model work
        handle, revision = self.store.collection_at(query.collection)  # the revision: no re-read after encoding
        if query.include_regions:
            if query.text is None:
                raise InvalidInput("include_regions needs a text query (the region is where the text matched)")
            if handle.row.encoder_family != "groupvit":
                raise InvalidInput(f"include_regions needs a GroupViT collection; {handle.name!r} uses "
                                   f"{handle.row.encoder_family}")
        reranker = self.models.reranker(query.rerank_model) if query.rerank_model else None
        answerer = None
        if query.ask or query.ask_model:
            check_question(query.ask)
            if not query.ask_model:
                raise InvalidInput("ask needs ask_model: a BLIP VQA or BLIP-2 checkpoint the server serves")
            answerer = self.models.answerer(query.ask_model)

        t = time.perf_counter()
        if keyword_only:
            vector, rerank_text = None, (query.rerank_text or "").strip() or keywords
        else:
            vector, rerank_text = self.query_vector(query, handle, deadline)
            rerank_text = rerank_text or (keywords or None)
        timing["encode_ms"] = _ms(t)
        if reranker is not None and rerank_text is None:
            raise InvalidInput("reranking needs a text: set rerank_text when the query is an image, vector or item")

        # The ranked list is the same for every page of a query: the reranked head (the first-stage top
        # `depth`, which depends on top_k, not on offset) then the first-stage order. A page is a slice of it,
        # so the first stage fetches offset + top_k (+ 1 to tell whether another page follows), and ITM runs
        # only when the page overlaps the head.
        depth = 0
        if reranker is not None:
            depth = min(query.rerank_depth or self.default_depth, self.max_depth)
            depth = max(depth, min(top_k, self.max_depth))
        end = offset + top_k
        k1 = max(end, depth) + 1 + (1 if query.item_id is not None else 0)
        hybrid = bool(keywords) and not keyword_only and not query.local_only
        if hybrid:  # each list's depth: the same for every page of the query (search/hybrid.py)
            window = max(FUSION_DEPTH, top_k, depth)
            k1 = window + (1 if query.item_id is not None else 0)
        remaining(deadline, "the index search")
        missing: list[int] = []
        score_kind = "vector"
        if keyword_only:
            found = keyword_hits(self._keyword_stage(handle, keywords, where_ast, max(end, depth) + 1, timing))
            strategy, score_kind = ("none" if where_ast is None else "keywords"), "keyword"
        elif self.fanout is not None and not query.local_only:
            t = time.perf_counter()
            found, strategy, missing = self.fanout.first_stage(
                handle.name, vector, k1, query, deadline,
                local=lambda: self._first_stage(handle, vector, k1, where_ast, query, timing, revision))
            timing["ann_ms"] = _ms(t)
        else:
            found, strategy = self._first_stage(handle, vector, k1, where_ast, query, timing, revision)
        if query.item_id is not None:
            found = [h for h in found if h.id != int(query.item_id)]
        if min_score is not None:  # first-stage scores come sorted, so this cuts the list
            found = [h for h in found if h.score >= min_score]
        if hybrid:
            matches = self._keyword_stage(handle, keywords, where_ast, window, timing)
            if query.item_id is not None:
                matches = [m for m in matches if m[0] != int(query.item_id)]
            found, score_kind = fuse(found[:window], matches), "rrf"
        next_offset = end if len(found) > end else 0
        if query.local_only:  # a shard answering a fan-out: ids and scores are all the coordinator needs
            timing["total_ms"] = _ms(t_start)
            return SearchResult(hits=[Hit(id=int(h.id), uri="", score=float(h.score)) for h in found[offset:end]],
                                timing=timing, filter_strategy=strategy, candidates=len(found),
                                next_offset=next_offset, score_kind=score_kind)
        found = found[:max(end, depth)]
        rerank_head = reranker is not None and offset < depth
        wanted = found if rerank_head else found[offset:end]

        t = time.perf_counter()
        rows = handle.get([h.id for h in wanted], with_vectors=query.include_vector)
        hits = [_hit(h, rows[h.id]) for h in wanted if h.id in rows]  # a row deleted meanwhile is skipped
        timing["fetch_ms"] = _ms(t)

        if rerank_head and hits:
            t = time.perf_counter()
            hits = self._rerank(reranker, rerank_text, hits, rows, depth, deadline)
            timing["rerank_ms"] = _ms(t)
            if query.min_rerank_probability is not None:
                hits = [h for h in hits if h.rerank_score is not None and h.rerank_score >= query.min_rerank_probability]
            hits = hits[offset:end]
        elif query.min_rerank_probability is not None:
            hits = []  # past the reranked head no hit has an ITM probability to pass the cut-off
        hits = hits[:top_k]

        for hit in hits:
            row = rows[hit.id]
            if query.include_metadata:
                hit.metadata = dict(row.meta or {})
            if query.include_caption or query.caption_model:
                hit.caption = row.caption or ""
            if query.include_vector:
                hit.vector = row.vector_array().copy()
        if query.include_regions and hits:
            t = time.perf_counter()
            self._regions(self.models.for_collection(handle).encoder, query.text, hits, rows, deadline)
            timing["regions_ms"] = _ms(t)
        if answerer is not None and hits:
            t = time.perf_counter()
            for chunk in self._item_images(hits, rows, deadline, "ask", chunk_count=ASK_CHUNK):
                remaining(deadline, "answering")
                answers = answerer.answer([image for _, image in chunk], [query.ask] * len(chunk))
                for (hit, _), answer in zip(chunk, answers):
                    hit.answer = answer
            for hit in hits:
                hit.answer = hit.answer or ""
            timing["ask_ms"] = _ms(t)
        if query.caption_model:
            t = time.perf_counter()
            self._caption(query.caption_model, [h for h in hits if not h.caption], rows, deadline)
            timing["caption_ms"] = _ms(t)
        timing["total_ms"] = _ms(t_start)
        return SearchResult(hits=hits, timing=timing, filter_strategy=strategy, candidates=len(found),
                            missing_shards=missing, next_offset=next_offset, score_kind=score_kind)

    # -- stages --

    def _keyword_stage(self, handle, keywords: str, where_ast, limit: int, timing) -> list[tuple[int, float]]:
        """The collection's keyword matches under the filter, best first: [(id, score)]."""
        t = time.perf_counter()
        where = None if where_ast is None else filters.to_sql(where_ast, Item, handle.catalog.dialect)
        matches = handle.catalog.keyword_search(handle.id, keywords, where, limit=limit)
        timing["keyword_ms"] += _ms(t)
        return matches

    def _first_stage(self, handle, vector, k: int, where_ast, query: Query, timing, revision) -> tuple[list, str]:
        opts = dict(nprobe=query.nprobe or None, ef=query.ef or None, revision=revision)
        if where_ast is None:
            t = time.perf_counter()
            hits = handle.search(vector, k, **opts)[0]
            timing["ann_ms"] += _ms(t)
            return hits, "none"
        where = filters.to_sql(where_ast, Item, handle.catalog.dialect)
        t = time.perf_counter()
        # tombstones among the ids are fine: handle.search keeps the ids its (caught up) index holds
        ids = handle.catalog.select_ids(handle.id, where, limit=self.selector_max_ids + 1, tombstones=True)
        timing["filter_ms"] += _ms(t)
        if len(ids) <= self.selector_max_ids:
            t = time.perf_counter()
            hits = handle.search(vector, k, ids=ids, **opts)[0]
            timing["ann_ms"] += _ms(t)
            return hits, "id_selector"
        # Unselective: at least selector_max_ids + 1 items match; over-fetch and check candidates in SQL.
        deepest = max(MAX_TOP_K, k)
        fetch = min(deepest, max(4 * k, 64))
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
            if fetch >= deepest:
                break
            fetch = min(deepest, fetch * 4)
        t = time.perf_counter()
        hits = handle.search(vector, k, where=where, **opts)[0]  # rare: matches are many but far from the query
        timing["ann_ms"] += _ms(t)
        return hits, "post_filter"

    def _item_images(self, hits: list[Hit], rows, deadline, stage: str, *, chunk_count: int = RERANK_CHUNK):
        """Chunks of [(hit, image)] for the hits whose stored image can be read (others are logged and left
        out), decoded lazily under the pixel budget."""
        readable: list[tuple[int, bytes]] = []
        for position, hit in enumerate(hits):
            try:
                readable.append((position, self.images.data(rows[hit.id])))
            except MMSearchError as exc:
                log.warning("%s: skipping item %d: %s", stage, hit.id, exc)

        def skip(position, exc):
            log.warning("%s: skipping item %d: %s", stage, hits[position].id, exc)

        for chunk in self.decode(readable, deadline, label=lambda p: f"item {hits[p].id}",
                                 draft_size=CANDIDATE_IMAGE_DRAFT, on_error=skip, chunk_count=chunk_count):
            yield [(hits[position], image) for position, image in chunk]

    def _rerank(self, reranker, text: str, hits: list[Hit], rows, depth: int, deadline) -> list[Hit]:
        head, tail = hits[:depth], hits[depth:]
        for chunk in self._item_images(head, rows, deadline, "rerank"):
            remaining(deadline, "reranking")
            probs = reranker.score([image for _, image in chunk], [text] * len(chunk))
            for (hit, _), p in zip(chunk, probs):
                hit.rerank_score = float(p)
        scored = sorted((h for h in head if h.rerank_score is not None), key=lambda h: (-h.rerank_score, -h.score, h.id))
        unscored = [h for h in head if h.rerank_score is None]
        return scored + unscored + tail

    def _regions(self, encoder, text: str, hits: list[Hit], rows, deadline) -> None:
        from search.regions import match_regions

        for chunk in self._item_images(hits, rows, deadline, "regions"):
            remaining(deadline, "finding regions")
            images = [image for _, image in chunk]
            for (hit, image), region in zip(chunk, match_regions(encoder, images, text)):
                # candidates may be decoded at a reduced size (JPEG draft): scale to the stored image's pixels
                sx, sy = (hit.width or image.width) / image.width, (hit.height or image.height) / image.height
                left, top, right, bottom = region.view
                region.view = (left * sx, top * sy, right * sx, bottom * sy)
                x0, y0, x1, y1 = region.box
                region.box = (int(x0 * sx), int(y0 * sy), int(round(x1 * sx)), int(round(y1 * sy)))
                hit.region = region

    def _caption(self, model: str, hits: list[Hit], rows, deadline) -> None:
        captioner = self.models.captioner(model)
        for chunk in self._item_images(hits, rows, deadline, "caption"):
            remaining(deadline, "captioning")
            for (hit, _), text in zip(chunk, captioner.caption([image for _, image in chunk])):
                hit.caption = text


MAX_QUESTION_CHARS = 1000
ASK_CHUNK = 8


def check_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InvalidInput("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidInput(f"the question is longer than {MAX_QUESTION_CHARS} characters")
    return question


def _check_thresholds(query: Query) -> None:
    import math

    for name in ("min_score", "min_rerank_probability"):
        value = getattr(query, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise InvalidInput(f"{name} must be a finite number, got {value!r}")
    if query.min_rerank_probability is not None:
        if not 0.0 <= query.min_rerank_probability <= 1.0:
            raise InvalidInput(f"min_rerank_probability is a probability (0..1), got {query.min_rerank_probability}")
        if not query.rerank_model:
            raise InvalidInput("min_rerank_probability needs a reranker (rerank model)")


def _vector_kinds(query: Query) -> list[str]:
    return [k for k, v in (("text", query.text), ("image", query.image), ("vector", query.vector),
                           ("item_id", query.item_id)) if v is not None]


def _hit(first_stage, row: ItemRow) -> Hit:
    return Hit(id=int(first_stage.id), uri=row.uri, score=float(first_stage.score), width=int(row.width or 0),
               height=int(row.height or 0), sha256=row.sha256,
               vector_score=getattr(first_stage, "vector_score", None),
               keyword_score=getattr(first_stage, "keyword_score", None))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
