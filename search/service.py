"""The search service: everything the server does, independent of how requests arrive.

    service = Service(store, models, config)
    result = service.search(Query(collection="photos", text="a cat"), deadline=time.monotonic() + 10)
    vectors = service.embed(model="path/to/siglip", texts=["a cat"], deadline=...)

The gRPC servicer (search/grpc_api.py) and the HTTP routes convert requests into these calls and results
back, and map errors (mmsearch.errors) to their status codes; so both transports always answer the same.
Every method checks its inputs and raises a typed error; `deadline` is a time.monotonic() instant (the
transports always set one).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from indexer.files import normalize_roots
from indexer.ingest import Ingest
from mmsearch.errors import Busy, InvalidInput, MMSearchError, NotFound
from search.config import ServerConfig
from search.limits import PixelBudget
from search.pipeline import ASK_CHUNK, Query, SearchResult, Searcher, check_question, image_blob_path, remaining

log = logging.getLogger("mmsearch.service")

MAX_EMBED_INPUTS = 1024
MAX_CAPTION_TOKENS = 256
MAX_BEAMS = 16
UPSERT_CHUNK = 32
MAX_IDS = 10_000  # ids per Get / Delete call


@dataclass
class Embedded:
    model: str
    dim: int
    text_vectors: np.ndarray
    image_vectors: np.ndarray


@dataclass
class UpsertInput:
    """One item of an Upsert: image bytes, or a server-side path as uri (under the image roots); or its
    own `vector` (the collection's dim), with the image optional."""

    uri: str = ""
    image: bytes = b""
    metadata: dict = field(default_factory=dict)
    caption: str = ""
    vector: list[float] | None = None


@dataclass
class ItemStatus:
    index: int
    uri: str
    ok: bool
    id: int = 0
    error: str = ""
    status: str = "OK"   # a gRPC status name (mmsearch.errors grpc_status) for the failed item


@dataclass
class Upserted:
    statuses: list[ItemStatus]

    @property
    def upserted(self) -> int:
        return sum(1 for s in self.statuses if s.ok)

    @property
    def failed(self) -> int:
        return len(self.statuses) - self.upserted


@dataclass
class CollectionInfo:
    name: str
    model: str
    model_digest: str
    dim: int
    items: int
    index: str
    indexed: int = 0
    text_fields: list[str] = field(default_factory=list)


class Service:
    """`local=True`: the operator's own process (the CLI), which may read item files anywhere; a server
    reads only under its image_roots."""

    def __init__(self, store, models, config: ServerConfig, *, local: bool = False):
        self.store, self.models, self.config = store, models, config
        self.roots = normalize_roots(config.image_roots)
        # Upsert's ingest: files only under the image roots, decoded in full (search/limits.py decodes them)
        self.ingest = Ingest(max_bytes=config.max_message_bytes, max_pixels=int(config.max_image_mp * 1e6),
                             roots=self.roots)
        self.pixel_budget = PixelBudget(config.pixel_budget_mp * 1e6)
        self.searcher = Searcher(store, models, default_depth=config.rerank_default_depth,
                                 max_depth=config.rerank_max_depth, image_roots=None if local else config.image_roots,
                                 pixel_budget=self.pixel_budget, max_image_pixels=int(config.max_image_mp * 1e6))
        if config.shards:
            from search.shards import ShardFanout, parse_shard

            own = parse_shard(config.shard)
            self.searcher.fanout = ShardFanout(config.shards, None if own is None else own[0], token=config.token,
                                               max_message_mb=config.max_message_mb)
        self.on_search = None  # called with each SearchResult (metrics)
        self._rerankers: list[str] | None = None

    # -- search and models --

    def search(self, query: Query, deadline: float) -> SearchResult:
        if not query.collection:
            raise InvalidInput("collection is required")
        result = self.searcher.search(query, deadline)
        if self.on_search is not None:
            self.on_search(result)
        return result

    def rerankers(self) -> list[str]:
        """The allowed models that are ITM rerankers (their config.json names a *ForImageTextRetrieval
        architecture: BLIP, BLIP-2), for the page's rerank switch; read once, nothing is loaded."""
        if self._rerankers is None:
            import json

            from encoders.checkpoint import resolve

            found = []
            for name in self.config.allow_models:
                try:
                    config = json.loads((resolve(name) / "config.json").read_text(encoding="utf-8"))
                except (MMSearchError, OSError, ValueError):
                    continue
                if any(str(a).endswith("ForImageTextRetrieval") for a in config.get("architectures") or []):
                    found.append(name)
            self._rerankers = found
        return self._rerankers

    def embed(self, *, collection: str = "", model: str = "", texts=(), images=(), deadline: float) -> Embedded:
        if bool(collection) == bool(model):
            raise InvalidInput("give either a collection or a model")
        texts, images = list(texts), list(images)
        n = len(texts) + len(images)
        if n == 0:
            raise InvalidInput("nothing to embed: give texts or images")
        if n > MAX_EMBED_INPUTS:
            raise InvalidInput(f"at most {MAX_EMBED_INPUTS} inputs per call, got {n}")
        _check_texts(texts)
        enc = self.models.for_collection(self.store.collection(collection)) if collection else self.models.dual(model)
        text_vectors = image_vectors = np.zeros((0, int(enc.dim)), np.float32)
        if texts:
            text_vectors = enc.encode_texts(texts, timeout=remaining(deadline, "encoding texts"))
        if images:
            _check_images(images)
            parts = []
            for chunk in self.searcher.decode(enumerate(images), deadline, chunk_count=self.config.batch_max):
                parts.append(enc.encode_images([image for _, image in chunk],
                                               timeout=remaining(deadline, "encoding images")))
            image_vectors = np.concatenate(parts)
        return Embedded(model=enc.name, dim=int(enc.dim), text_vectors=text_vectors, image_vectors=image_vectors)

    def rerank(self, *, model: str, image: bytes, texts, deadline: float) -> np.ndarray:
        texts = list(texts)
        if not texts:
            raise InvalidInput("nothing to score: give at least one text")
        _check_texts(texts)
        if len(texts) > MAX_EMBED_INPUTS:
            raise InvalidInput(f"at most {MAX_EMBED_INPUTS} texts per call, got {len(texts)}")
        reranker = self.models.reranker(model)
        _check_images([image], "image")
        for chunk in self.searcher.decode([(0, image)], deadline, label=lambda _: "image"):
            decoded = chunk[0][1]
            remaining(deadline, "reranking")
            return np.asarray(reranker.score([decoded] * len(texts), texts), dtype=np.float32)
        raise AssertionError("unreachable: decode yields the image or raises")

    def caption(self, *, model: str, images, prompt: str = "", max_new_tokens: int = 0, num_beams: int = 0,
                deadline: float) -> list[str]:
        images = list(images)
        if not images:
            raise InvalidInput("nothing to caption: give at least one image")
        if len(images) > MAX_EMBED_INPUTS:
            raise InvalidInput(f"at most {MAX_EMBED_INPUTS} images per call, got {len(images)}")
        if not 0 <= max_new_tokens <= MAX_CAPTION_TOKENS:
            raise InvalidInput(f"max_new_tokens must be 0..{MAX_CAPTION_TOKENS} (0 = 30), got {max_new_tokens}")
        if not 0 <= num_beams <= MAX_BEAMS:
            raise InvalidInput(f"num_beams must be 0..{MAX_BEAMS} (0 = 1), got {num_beams}")
        captioner = self.models.captioner(model)
        _check_images(images)
        captions: list[str] = []
        for chunk in self.searcher.decode(enumerate(images), deadline, chunk_count=8):
            remaining(deadline, "captioning")
            captions.extend(captioner.caption([image for _, image in chunk], prompt=prompt or None,
                                              max_new_tokens=max_new_tokens or 30, num_beams=num_beams or 1))
        return captions

    def ask(self, *, model: str, question: str, images=(), collection: str = "", item_ids=(),
            max_new_tokens: int = 0, num_beams: int = 0, deadline: float) -> list[str]:
        """One answer per input: the images, then the collection's items (their stored pixels)."""
        from encoders.api import check_generation

        images, item_ids = [bytes(b) for b in images], [int(i) for i in item_ids]
        check_question(question)
        if not images and not item_ids:
            raise InvalidInput("nothing to ask about: give images or item ids")
        if len(images) + len(item_ids) > MAX_EMBED_INPUTS:
            raise InvalidInput(f"at most {MAX_EMBED_INPUTS} images and items per call")
        if item_ids and not collection:
            raise InvalidInput("item ids need their collection")
        max_new_tokens, num_beams = check_generation(max_new_tokens or 20, num_beams or 1)
        answerer = self.models.answerer(model)
        _check_images(images)
        blobs = list(enumerate(images))
        if item_ids:
            rows = {row.id: row for row in self.get(collection, item_ids)}
            blobs += [(len(images) + n, self.searcher.images.data(rows[i])) for n, i in enumerate(item_ids)]
        answers: dict[int, str] = {}
        label = (lambda p: f"images[{p}]" if p < len(images) else f"item {item_ids[p - len(images)]}")
        for chunk in self.searcher.decode(blobs, deadline, label=label, chunk_count=ASK_CHUNK):
            remaining(deadline, "answering")
            replies = answerer.answer([image for _, image in chunk], [question] * len(chunk),
                                      max_new_tokens=max_new_tokens, num_beams=num_beams)
            answers.update((position, reply) for (position, _), reply in zip(chunk, replies))
        return [answers[p] for p in range(len(blobs))]

    # -- items --

    def upsert(self, stream: Iterable[tuple[str, UpsertInput]], deadline: float) -> Upserted:
        """Write a stream of (collection, item) pairs; the first names the collection, later ones may leave
        it empty. Items go through the ingest path (indexer/ingest.py) and are decoded under the pixel budget
        and encoded in chunks; each gets a status. An item with its own vector is not encoded; without an
        image it is not read or decoded either."""
        from indexer.ingest import SourceItem, check_meta, store_thumbnail
        from indexer.store import UpsertRow
        from indexer.vector_sources import unit_rows, vector_sha256

        statuses: list[ItemStatus] = []
        state: dict = {}  # handle, enc
        read: dict[int, tuple] = {}  # index -> (ingest.Read, given vector or None), waiting for its decoded image
        given_only: list[tuple[int, UpsertRow]] = []  # vector items without an image, waiting to be written

        def fail(index: int, uri: str, exc: MMSearchError):
            statuses.append(ItemStatus(index=index, uri=uri[:4096], ok=False, error=exc.brief(), status=exc.grpc_status))

        def write(batch: list[tuple[int, UpsertRow]]) -> None:
            for (index, row), (item_id, problem) in zip(batch, state["handle"].upsert([row for _, row in batch])):
                if problem is None:
                    statuses.append(ItemStatus(index=index, uri=row.uri, ok=True, id=item_id))
                else:
                    statuses.append(ItemStatus(index=index, uri=row.uri, ok=False, id=item_id, error=problem,
                                               status="ALREADY_EXISTS"))

        def given_vector(item: UpsertInput):
            dim = state["handle"].dim
            if len(item.vector) != dim:
                raise InvalidInput(f"vector has {len(item.vector)} values; collection {state['handle'].name!r} "
                                   f"has dim {dim}")
            unit, problems = unit_rows(np.asarray(item.vector, dtype=np.float32))
            if problems:
                raise InvalidInput(problems[0])
            return unit[0]

        def blobs() -> Iterator[tuple[int, bytes]]:
            for index, (collection, item) in enumerate(stream):
                if "handle" not in state:
                    if not collection:
                        raise InvalidInput("the first Upsert message must name the collection")
                    state["handle"] = self.store.collection(collection)
                    state["enc"] = self.models.for_collection(state["handle"])
                elif collection and collection != state["handle"].name:
                    raise InvalidInput(f"message {index} names collection {collection!r}; "
                                       f"this stream writes {state['handle'].name!r}")
                try:
                    vector = given_vector(item) if item.vector else None
                    if vector is not None and not item.image:
                        # bring-your-own embedding, no image: the uri is a label, the content key the vector
                        problem = check_meta(item.metadata)
                        if problem:
                            raise InvalidInput(problem)
                        sha = vector_sha256(vector)
                        given_only.append((index, UpsertRow(uri=item.uri or f"sha256:{sha}", sha256=sha, width=0,
                                                            height=0, vector=vector, meta=item.metadata,
                                                            caption=item.caption or None)))
                        if len(given_only) >= UPSERT_CHUNK:
                            write(given_only)
                            given_only.clear()
                        continue
                    got = self.ingest.read(SourceItem(uri=item.uri, data=bytes(item.image) or None,
                                                      meta=item.metadata, caption=item.caption or None))
                    read[index] = (got, vector)
                    yield index, got.data
                except MMSearchError as exc:
                    fail(index, item.uri, exc)

        def decode_failed(index: int, exc: MMSearchError):
            fail(index, read.pop(index)[0].uri if index in read else "", exc)

        for chunk in self.searcher.decode(blobs(), deadline, label=lambda i: f"item {i}: image",
                                          on_error=decode_failed, chunk_count=UPSERT_CHUNK):
            enc = state["enc"]
            items = [(index, image, *read.pop(index)) for index, image in chunk]
            to_encode = [image for _, image, _, vector in items if vector is None]
            encoded = iter(enc.encode_images(to_encode, timeout=remaining(deadline, "encoding")) if to_encode else ())
            batch = []
            for index, image, got, vector in items:
                if got.uploaded and self.config.keep_images:  # rerank and captions read these bytes back later
                    self._keep_image(got.sha256, got.data)
                record = self.ingest.finish(got, image)
                store_thumbnail(self.store.media_dir, record)
                batch.append((index, UpsertRow(uri=record.uri, sha256=record.sha256, width=record.width,
                                               height=record.height, vector=next(encoded) if vector is None else vector,
                                               meta=record.meta, caption=record.caption)))
            write(batch)
        if given_only:
            write(given_only)
        if "handle" not in state:
            raise InvalidInput("empty Upsert stream: send at least one item")
        statuses.sort(key=lambda s: s.index)
        return Upserted(statuses)

    def _keep_image(self, sha: str, data: bytes) -> None:
        path = image_blob_path(self.store.media_dir, sha)
        if os.path.exists(path):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def delete(self, collection: str, ids) -> int:
        ids = _check_ids(ids, "delete")
        return self.store.collection(collection).delete(ids=ids)

    def get(self, collection: str, ids, *, include_vector: bool = False) -> list:
        """The items in request order (catalog.ItemRow); NotFound naming the ids that are not there."""
        ids = _check_ids(ids, "get")
        handle = self.store.collection(collection)
        rows = handle.get(ids, with_vectors=include_vector)
        missing = [i for i in ids if i not in rows]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise NotFound(f"item(s) {shown} not in collection {handle.name!r}")
        return [rows[i] for i in ids]

    def thumbnail(self, collection: str, item_id: int, deadline: float) -> tuple[str | None, object]:
        """(path of the item's thumbnail, its row). The file is found by the item's stored sha256
        (DATA_DIR/thumbs, written at ingest); a missing one is made again from what the item was made from
        (ItemImages), else the path is None (the page shows a placeholder)."""
        from indexer.thumbnails import THUMB_SIZE, make_thumbnail, thumbnail_path, write_thumbnail

        row = self.get(collection, [item_id])[0]
        path = thumbnail_path(self.store.media_dir, row.sha256)
        if os.path.exists(path):
            return path, row
        try:
            data = self.searcher.images.data(row)
            for chunk in self.searcher.decode([(0, data)], deadline, label=lambda _: f"item {row.id}",
                                              draft_size=(THUMB_SIZE, THUMB_SIZE)):
                return write_thumbnail(self.store.media_dir, row.sha256, make_thumbnail(chunk[0][1])), row
        except Busy:
            raise  # the pixel budget is spent for now: retry later
        except (NotFound, InvalidInput) as exc:  # unreadable, changed or corrupt original
            log.info("no thumbnail for item %d of %s: %s", row.id, collection, exc)
            return None, row
        raise AssertionError("unreachable: decode yields the image or raises")

    def original(self, collection: str, item_id: int) -> tuple[bytes, object]:
        """(the bytes the item was made from, its row): the kept copy of uploaded bytes, or its file under
        image_roots while it still has the item's sha256; NotFound / InvalidInput saying why not."""
        row = self.get(collection, [item_id])[0]
        return self.searcher.images.data(row), row

    # -- collections --

    def _info(self, row, *, stats: bool = False) -> CollectionInfo:
        info = CollectionInfo(name=row.name, model=row.encoder_name, model_digest=row.encoder_digest, dim=row.dim,
                              items=self.store.catalog.count(row.id), index=row.index_spec,
                              text_fields=list(row.text_fields or []))
        if stats:
            index = self.store.collection(row.name).index
            info.index, info.indexed = str(index.spec), index.ntotal
        return info

    def create_collection(self, name: str, model: str, index: str = "", *, text_fields=()) -> CollectionInfo:
        from indexer.catalog import check_collection_name
        from indexer.text_index import check_text_fields

        if not model:
            raise InvalidInput("model is required: the dual encoder the collection is bound to")
        check_collection_name(name)
        fields = check_text_fields(text_fields)  # before the model loads
        enc = self.models.dual(model)
        handle = self.store.create_collection(name, enc, index or None, text_fields=fields)
        return self._info(handle.row)

    def list_collections(self) -> list[CollectionInfo]:
        return [self._info(row) for row in self.store.collections()]

    def drop_collection(self, name: str) -> None:
        self.store.drop_collection(name)

    def collection_stats(self, name: str) -> CollectionInfo:
        return self._info(self.store.collection(name).row, stats=True)


def _check_texts(texts: list[str]) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"texts[{i}] is empty")


def _check_images(images: list[bytes], label: str | None = None) -> None:
    for i, data in enumerate(images):
        if not data:
            raise InvalidInput(f"{label or f'images[{i}]'}: empty image (0 bytes)")


def _check_ids(ids, what: str) -> list[int]:
    ids = [int(i) for i in ids]
    if not ids:
        raise InvalidInput(f"give the ids to {what}")
    if len(ids) > MAX_IDS:
        raise InvalidInput(f"at most {MAX_IDS} ids per {what} call, got {len(ids)}")
    return ids
