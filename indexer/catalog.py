"""The catalog: SQLAlchemy models and the few queries everything else needs.

The catalog is the source of truth; every FAISS index can be rebuilt from it. Its layout (schema version 2):

  items         one row per image: uri, sha256, size, caption, metadata (JSON), times, soft-delete flag, rev.
                No vector: scans and row fetches never read vector bytes.
  item_vectors  (item_id, vector): the float32 little-endian, L2-normalised embedding of each live item.
  meta_keys     (id, collection_id, path, kind): every metadata key a filter can reach, per collection and
                kind of value: "n" number, "s" string, "b" boolean (path "exif.iso" for {"exif": {"iso": 100}}).
  meta_num      (key_id, value, item_id) for numbers and booleans (1 / 0), meta_str the same for strings
                (their first STRING_PREFIX characters): the metadata index, kept in the item's transaction.
                Primary key (key_id, value, item_id) answers `meta.k = v`, IN and ranges by an index range;
                (item_id, key_id) answers "does this item match" and finds an item's rows to replace them.
  item_text     the full-text index (schema version 3): one document per live item from its caption, file
                name and the collection's `text_fields` (indexer/text_index.py: FTS5 on SQLite, tsvector +
                GIN on PostgreSQL), kept in the item's transaction; `keyword_search` ranks matches.

Writes that touch items go through `Catalog.write(collection_id)`, which first bumps the collection's
`revision` counter (taking the write lock before anything is read) and stamps every changed row with the new
revision in `Item.rev`. An index file records the revision it covers (its watermark); catching up is "apply
every item row with rev > watermark". Deletes are soft (`deleted=True`, vector and metadata rows removed) so
that a catch-up sees them; `purge_deleted` drops tombstones that every index has already applied and records
the revision in `Collection.purged_rev`. Rows are written in bulk (`insert_items`, `update_items`):
executemany on SQLite, COPY on PostgreSQL (binary for items and vectors), with ids allocated up front. On
PostgreSQL item_vectors keeps vectors in their rows, uncompressed (`_store_vectors_inline`).

SQLite (the default, `DATA_DIR/catalog.db`, WAL mode, PAGE_SIZE pages for new files) and PostgreSQL (any
SQLAlchemy URL) are supported. The schema version is stored in `mmsearch_meta`; a catalog written by schema
version 1 is upgraded in place when opened (indexer/catalog_upgrade.py); one written by a newer schema is
refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, Numeric,
                        String, Text, UniqueConstraint, and_, any_, bindparam, cast, column, create_engine, event,
                        false, func, literal, literal_column, select, table, text, true, tuple_, update)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from mmsearch.errors import CatalogError, Conflict, InvalidInput, NotFound
from indexer import text_index
from indexer.reads import DriverReads
from indexer.sqlite_file import check_sqlite_file, create_sqlite_file

log = logging.getLogger("mmsearch.indexer")

SCHEMA_VERSION = 3
PAGE_SIZE = 16384  # new SQLite catalogs: five 768-d vectors fill a page (4096-byte pages hold one)
STRING_PREFIX = 256  # characters of a metadata string kept in meta_str (PostgreSQL caps an index entry)

# int64 ids; on SQLite the primary key must be plain INTEGER to be the auto-incrementing rowid.
Int64 = BigInteger().with_variant(Integer, "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
# Metadata strings compare by code point on both databases, whatever the PostgreSQL database's locale.
CodePointText = Text().with_variant(Text(collation="C"), "postgresql")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class MetaEntry(Base):
    """Key/value facts about the catalog itself; `schema_version` lives here."""

    __tablename__ = "mmsearch_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Collection(Base):
    """A named set of items embedded by one encoder (name + weights digest) into `dim` dimensions."""

    __tablename__ = "collections"
    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    uid: Mapped[str] = mapped_column(String(32), default=lambda: uuid.uuid4().hex)  # tells index files apart
    encoder_name: Mapped[str] = mapped_column(Text)
    encoder_family: Mapped[str] = mapped_column(String(32))
    encoder_digest: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int] = mapped_column(Integer)
    index_spec: Mapped[str] = mapped_column(String(100), default="auto")  # see indexer/ann: IndexSpec
    index_memory: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # bytes; None: the store's
    revision: Mapped[int] = mapped_column(Int64, default=0)  # bumped by every write transaction
    purged_rev: Mapped[int] = mapped_column(Int64, default=0)  # tombstones with rev <= this are gone
    live_count: Mapped[int] = mapped_column(Int64, default=0)  # live items, kept by every write
    # metadata fields whose values the full-text index holds beside captions and file names (text_index)
    text_fields: Mapped[list] = mapped_column(Json, default=list)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Item(Base):
    """One indexed image. Columns (all usable in filters built by search/filters.py):

    id            int64 primary key; also the FAISS id
    collection_id the owning collection
    uri           where the image came from (absolute path, manifest uri, or "sha256:<hex>" for bytes)
    sha256        hex digest of the file bytes (of the vector, for imported embeddings); unique among live
                  items of a collection
    width, height size of the decoded image (after EXIF rotation)
    caption       generated caption (index-time --caption) or None
    meta          JSON object of user metadata (manifest columns, API dicts); indexed in meta_num / meta_str
    created, updated  UTC timestamps
    deleted       soft-delete flag (a tombstone kept until every index has applied it)
    rev           collection revision of the last change to this row (the index catch-up cursor)
    """

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(Int64, ForeignKey("collections.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    caption: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict] = mapped_column(Json, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    rev: Mapped[int] = mapped_column(Int64, default=0)

    __table_args__ = (
        # No two live items of a collection share content; enforced by the database itself.
        Index("ix_items_live_sha", "collection_id", "sha256", unique=True,
              sqlite_where=text("deleted = 0"), postgresql_where=text("deleted = false")),
        Index("ix_items_uri", "collection_id", "uri"),
        Index("ix_items_rev", "collection_id", "rev"),
        # Filters on the built-in columns (search/filters.py) read ranges of these.
        Index("ix_items_width", "collection_id", "width"),
        Index("ix_items_height", "collection_id", "height"),
        Index("ix_items_created", "collection_id", "created"),
    )


ITEM_INDEXES_V2 = ("ix_items_width", "ix_items_height", "ix_items_created")
# insert_items' COPY of items rows on PostgreSQL: the columns and their types (a binary COPY)
ITEM_COPY_COLUMNS = ("id", "collection_id", "uri", "sha256", "width", "height", "caption", "meta", "created",
                     "updated", "deleted", "rev")
ITEM_COPY_TYPES = ("int8", "int8", "text", "varchar", "int4", "int4", "text", "jsonb", "timestamp", "timestamp",
                   "bool", "int8")


class ItemVector(Base):
    """The vector of one live item (float32 little-endian bytes, L2-normalised, `dim` values), apart from
    its row so that scans of items never read it. Kept in the item's transaction by Catalog."""

    __tablename__ = "item_vectors"
    item_id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=False)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class MetaKey(Base):
    """A metadata key of a collection that holds values of one kind ("n", "s" or "b")."""

    __tablename__ = "meta_keys"
    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(Int64, ForeignKey("collections.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(1))
    __table_args__ = (UniqueConstraint("collection_id", "path", "kind", name="uq_meta_keys"),
                      Index("ix_meta_keys_path", "path", "kind"))


class MetaNum(Base):
    """Numeric (and boolean, as 1 / 0) metadata values: one row per (key, item). The metadata index holds
    live items only (rows go in the delete's transaction), so a scan of it needs no look at the items."""

    __tablename__ = "meta_num"
    key_id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=False)
    value: Mapped[float] = mapped_column(Numeric(asdecimal=False), primary_key=True)
    item_id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=False)
    __table_args__ = (Index("ix_meta_num_item", "item_id", "key_id"), {"sqlite_with_rowid": False})


class MetaStr(Base):
    """String metadata values (their first STRING_PREFIX characters): one row per (key, item)."""

    __tablename__ = "meta_str"
    key_id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=False)
    value: Mapped[str] = mapped_column(CodePointText, primary_key=True)
    item_id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=False)
    __table_args__ = (Index("ix_meta_str_item", "item_id", "key_id"), {"sqlite_with_rowid": False})


META_TABLES = (MetaNum, MetaStr)


@dataclass(slots=True)
class ItemRow:
    """A snapshot of one item as the read paths return it (`Catalog.items_by_id`): the Item columns plus
    its vector, loaded by a Core select, which costs a fraction of building ORM instances (search fetches
    rows on every request)."""

    id: int
    collection_id: int
    uri: str
    sha256: str
    width: int
    height: int
    caption: str | None
    meta: dict
    created: dt.datetime
    updated: dt.datetime
    deleted: bool
    rev: int
    vector: bytes | None = None  # None when read with with_vectors=False

    def vector_array(self) -> np.ndarray:
        if self.vector is None:
            raise RuntimeError(f"item {self.id} was read without its vector (items_by_id(..., with_vectors=False))")
        return np.frombuffer(self.vector, dtype="<f4")


@dataclass(slots=True)
class NewItem:
    """An item to write with `Catalog.insert_items` / `update_items`. In an update, `meta` / `caption`
    None keep the stored values."""

    uri: str
    sha256: str
    width: int
    height: int
    vector: bytes  # float32 little-endian, L2-normalised
    meta: dict | None = None
    caption: str | None = None


FILTER_COLLECTION = "filter_collection_id"  # the bound parameter of ItemFilter.joins: the collection scanned


@dataclass(eq=False)
class ItemFilter:
    """A filter as SQL over items (search/filters.py makes them). `condition` is exact and cheap to test
    on one row (metadata terms are EXISTS lookups by item), so it checks candidate ids; `joins` (tables
    joined on item_id with their conditions; they take the collection id as the bound parameter
    FILTER_COLLECTION) let a scan start from the metadata index instead of reading the collection, and then
    `residual` is what the joins leave to check (None: nothing, and the scan reads the metadata index
    alone). `condition` is usable as a plain SQLAlchemy condition (`select(...).where(f)`)."""

    condition: Any
    joins: tuple = ()  # (metadata table alias, its condition): joined on item_id by Catalog.ids_statement
    residual: Any = None

    def __clause_element__(self):
        return self.condition

    def also(self, extra) -> "ItemFilter":
        """This filter AND an SQLAlchemy condition over Item."""
        from sqlalchemy import and_

        return ItemFilter(condition=and_(self.condition, extra), joins=self.joins,
                          residual=extra if self.residual is None else and_(self.residual, extra))


def as_filter(where) -> ItemFilter | None:
    if where is None or isinstance(where, ItemFilter):
        return where
    return ItemFilter(condition=where, residual=where)


class Job(Base):
    """One run of `mmsearch index` / `mmsearch import` (or the Python API). Counts are committed with each batch."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(Int64, ForeignKey("collections.id", ondelete="CASCADE"))
    sources: Mapped[list] = mapped_column(Json, default=list)  # what was asked for: paths / manifests
    options: Mapped[dict] = mapped_column(Json, default=dict)  # workers, batch size, update, caption model
    state: Mapped[str] = mapped_column(String(16), default="running")  # running|done|failed|interrupted
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    resumed_from: Mapped[int | None] = mapped_column(Int64, nullable=True)
    host: Mapped[str] = mapped_column(String(255), default=socket.gethostname)
    pid: Mapped[int] = mapped_column(Integer, default=os.getpid)
    seen: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    updated_count: Mapped[int] = mapped_column("updated", Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    started: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    decode_s: Mapped[float] = mapped_column(Float, default=0.0)  # worker CPU seconds spent reading+decoding
    encode_s: Mapped[float] = mapped_column(Float, default=0.0)  # main-process seconds in the encoder
    commit_s: Mapped[float] = mapped_column(Float, default=0.0)
    errors: Mapped[list[JobError]] = relationship(back_populates="job", order_by="JobError.id",
                                                  cascade="all, delete-orphan")


class JobError(Base):
    """One input a job could not index, with the reason (corrupt, truncated, too many pixels, ...)."""

    __tablename__ = "job_errors"
    id: Mapped[int] = mapped_column(Int64, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(Int64, ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    job: Mapped[Job] = relationship(back_populates="errors")


# ----------------------------------------------------------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")  # a key the filter language can name (search/filters.py)
_KEY_CHECKED: dict = {}  # key -> whether _KEY matches it: rows of a bulk write repeat the same few keys


def _filterable_key(key) -> bool:
    known = _KEY_CHECKED.get(key)
    if known is None:
        known = isinstance(key, str) and _KEY.match(key) is not None
        if len(_KEY_CHECKED) < 65536:
            _KEY_CHECKED[key] = known
    return known


_INT64 = 1 << 63


def meta_entries(meta: dict | None, *, sqlite: bool) -> list[tuple[str, str, object]]:
    """(path, kind, value) for every value of `meta` a filter can reach: numbers ("n"), booleans ("b",
    as 1 / 0) and strings ("s", cut to STRING_PREFIX characters) under keys the filter language can name,
    in nested objects as "a.b". Lists, nulls, non-finite numbers and other keys are not filterable."""
    out: list[tuple[str, str, object]] = []
    stack: list[tuple[str, dict]] = [("", meta)] if isinstance(meta, dict) else []
    while stack:
        prefix, obj = stack.pop()
        for key, value in obj.items():
            if not _filterable_key(key):
                continue
            path = prefix + key
            kind = type(value)
            if kind is str:  # the common cases first, by exact type (bulk writes call this for every row)
                out.append((path, "s", value[:STRING_PREFIX]))
            elif kind is float:
                if math.isfinite(value):
                    out.append((path, "n", value))
            elif kind is int and (not sqlite or -_INT64 <= value < _INT64):
                out.append((path, "n", value))
            elif isinstance(value, bool):
                out.append((path, "b", int(value)))
            elif isinstance(value, int):
                # SQLite integers are 64-bit: a larger one is kept as the float it rounds to
                out.append((path, "n", float(value) if sqlite and not -_INT64 <= value < _INT64 else value))
            elif isinstance(value, float):
                if math.isfinite(value):
                    out.append((path, "n", value))
            elif isinstance(value, str):
                out.append((path, "s", value[:STRING_PREFIX]))
            elif isinstance(value, dict):
                stack.append((path + ".", value))
    return out


def database_url(data_dir: str | os.PathLike, db: str | None = None) -> str:
    """The catalog URL: `db` (a SQLAlchemy URL) if given, else $MMSEARCH_DB, else SQLite in the data dir."""
    db = db or os.environ.get("MMSEARCH_DB") or None
    if db:
        return db
    return "sqlite:///" + os.path.join(os.path.abspath(os.fspath(data_dir)), "catalog.db")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages per connection (the default is 2 MiB)
    # A bulk write dirties one page per random key of each index (sha256, width, height, metadata values):
    # past 64 MiB SQLite would spill them to the WAL mid-transaction and write them again when touched
    # again. Dirty pages may take up to ~1 GiB (16 KiB pages) before spilling, so a batch writes each once;
    # reading connections never dirty pages and keep the 64 MiB above. (Not 65536: SQLite also reads the
    # value as a boolean, by its low byte, and 65536 would turn spilling off altogether.)
    cur.execute("PRAGMA cache_spill=65535")
    cur.close()


# The request path's statements, built once (building a statement costs more than running it on SQLite).
_STATE_BY_NAME = select(Collection.uid, Collection.revision, Collection.purged_rev).where(
    Collection.name == bindparam("name"))
_REVISION_BY_ID = select(Collection.revision, Collection.purged_rev).where(Collection.id == bindparam("cid"))


def _live_by_ids(collection_id, ids):
    """Live items of a collection among `ids`, looked up by primary key. `collection_id + 0` keeps SQLite
    (which has no statistics) from walking the whole collection through an index led by collection_id
    and testing each row against the list instead: 47 ms rather than 0.05 ms for 10 ids among 300,000."""
    return Item.id.in_(ids) & ((Item.collection_id + 0) == collection_id) & (Item.deleted == false())


_ITEM_COLUMNS = [c for c in Item.__table__.c]
_LIVE_ITEMS_BY_ID_NO_VECTOR = select(*_ITEM_COLUMNS).where(
    _live_by_ids(bindparam("cid"), bindparam("ids", expanding=True)))
_LIVE_ITEMS_BY_ID = (select(*_ITEM_COLUMNS, ItemVector.vector)
                     .select_from(Item.__table__.outerjoin(ItemVector.__table__, ItemVector.item_id == Item.id))
                     .where(_live_by_ids(bindparam("cid"), bindparam("ids", expanding=True))))
# Re-ranking reads vectors alone, by primary key.
_VECTORS_BY_ID = select(ItemVector.item_id, ItemVector.vector).where(
    ItemVector.item_id.in_(bindparam("ids", expanding=True)))
# Index builds and catch-ups page through a collection: live rows in id order (a rowid range on SQLite: the
# `+ 0` keeps it off the collection indexes), changed rows in (rev, id) order along ix_items_rev.
_SCAN_COLUMNS = (Item.id, Item.deleted, ItemVector.vector)
_SCAN_FROM = Item.__table__.outerjoin(ItemVector.__table__, ItemVector.item_id == Item.id)
_LIVE_PAGE = (select(*_SCAN_COLUMNS, Item.rev).select_from(_SCAN_FROM)
              .where((Item.collection_id + 0) == bindparam("cid"), Item.deleted == false(), Item.id > bindparam("after"))
              .order_by(Item.id).limit(bindparam("n")))
_CHANGED_PAGE = (select(*_SCAN_COLUMNS, Item.rev).select_from(_SCAN_FROM)
                 .where(Item.collection_id == bindparam("cid"), Item.rev > bindparam("rev"),
                        tuple_(Item.rev, Item.id) > tuple_(bindparam("after_rev"), bindparam("after")))
                 .order_by(Item.rev, Item.id).limit(bindparam("n")))

BIND_CHUNK = 900  # ids per statement (SQLite's old default limit is 999 bound values)


def _fts_match(name: str):
    return literal_column("item_text").op("MATCH")(bindparam(name))


def _fts_ranking(ranking: str):
    """SQLite: (score, conditions on the text index) for a ranking of the matches of :q. "bm25": bm25 of
    every word; "split": bm25 of the words in :rank_q, among the matches of :q (the other words are in half
    or more of all documents, where FTS5's bm25 gives them its floor weight 1e-6: they filter, they cannot
    rank, and leaving them out spares reading their whole doclists); "none": every word is such a word,
    so every score is 0 and the order is by id."""
    if ranking == "none":
        return literal_column("0.0"), [_fts_match("q")]
    score = -func.bm25(literal_column("item_text"))
    if ranking == "bm25":
        return score, [_fts_match("q")]
    every = (select(literal_column("rowid")).select_from(table("item_text")).where(_fts_match("q"))
             .correlate(None).scalar_subquery())
    return score, [_fts_match("rank_q"), literal_column("item_text.rowid").in_(every)]


def _keyword_statement(dialect: str, condition=None, ranking: str = "bm25"):
    """The live items of collection :cid whose document matches the query :q (text_index.fts5_query /
    tsquery), best first (ties by id), at most :n: (id, score), score higher = better (-bm25 on SQLite,
    ts_rank on PostgreSQL). `condition` (a filter over Item) is checked on each match. The text index
    leads the plan: `collection_id + 0` keeps SQLite from scanning the collection index instead."""
    if dialect == "sqlite":
        docs = table("item_text", column("rowid"))
        score, match = _fts_ranking(ranking)
        joined = docs.join(Item.__table__, Item.id == docs.c.rowid)
        where = [*match, (Item.collection_id + 0) == bindparam("cid")]
    else:
        docs = table("item_text", column("item_id"), column("collection_id"), column("body"))
        query = func.to_tsquery(literal_column("'simple'::regconfig"), bindparam("q"))
        score = func.ts_rank(docs.c.body, query)
        joined = docs.join(Item.__table__, Item.id == docs.c.item_id)
        where = [docs.c.body.op("@@")(query), docs.c.collection_id == bindparam("cid")]
    stmt = select(Item.id, score.label("score")).select_from(joined).where(*where, Item.deleted == false())
    if condition is not None:
        stmt = stmt.where(condition)
    return stmt.order_by(score.desc(), Item.id).limit(bindparam("n"))


RANKINGS = ("bm25", "split", "none")
_SQLITE_KEYWORDS = {r: _keyword_statement("sqlite", ranking=r) for r in RANKINGS}  # no filter, the join


def _pg_text_ranked():
    """PostgreSQL, no filter: item_text alone. Its rows are the live items' documents (written and removed
    in the items' own transactions) and carry the collection id, so no items row is read per match."""
    docs = table("item_text", column("item_id"), column("collection_id"), column("body"))
    query = func.to_tsquery(literal_column("'simple'::regconfig"), bindparam("q"))
    score = func.ts_rank(docs.c.body, query)
    return (select(docs.c.item_id, score.label("score"))
            .where(docs.c.body.op("@@")(query), docs.c.collection_id == bindparam("cid"))
            .order_by(score.desc(), docs.c.item_id).limit(bindparam("n")))


_PG_TEXT_RANKED = _pg_text_ranked()


def _fts_ranked(ranking: str):
    """SQLite, no filter: rank the text index alone (no items row read per match); Catalog.keyword_search
    then checks which of the best :m are live items of the collection (one primary-key read each), going
    deeper when too few are. The same order as _keyword_statement: (score desc, id) is a total order."""
    score, match = _fts_ranking(ranking)
    return (select(literal_column("rowid"), score.label("score")).select_from(table("item_text")).where(*match)
            .order_by(score.desc(), literal_column("rowid")).limit(bindparam("m")))


_FTS_RANKED = {r: _fts_ranked(r) for r in RANKINGS}
_LIVE_IDS = select(Item.id).where(_live_by_ids(bindparam("cid"), bindparam("ids", expanding=True)))
_DOCUMENTS = select(func.coalesce(func.sum(Collection.live_count), 0))  # = rows of item_text
_TERM_DOCUMENTS = select(func.count()).select_from(
    select(literal_column("rowid")).select_from(table("item_text")).where(_fts_match("q"))
    .limit(bindparam("cap")).subquery())
TERM_CACHE = 4096  # terms whose document counts a Catalog remembers
TERM_CACHE_S = 600.0


class Catalog:
    """An open catalog database. Thread-safe; sessions are short-lived and come from `session()` / `write()`."""

    def __init__(self, url: str, *, create: bool = True, upgrade: bool = True):
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise CatalogError(f"catalog URL {url!r} is not a valid SQLAlchemy URL") from exc
        self.url = url
        self.where = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        kwargs: dict = {}
        sqlite_file = None
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
                sqlite_file = os.path.abspath(parsed.database)
                os.makedirs(os.path.dirname(sqlite_file), exist_ok=True)
            kwargs["connect_args"] = {"timeout": 60}
        else:
            kwargs["pool_pre_ping"] = True
        if sqlite_file is not None:
            if not check_sqlite_file(sqlite_file):
                if not create:
                    raise CatalogError(f"{self.where} does not exist")
                create_sqlite_file(sqlite_file, page_size=PAGE_SIZE)
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except (ArgumentError, ImportError, SQLAlchemyError) as exc:
            raise CatalogError(f"cannot use catalog {self.where}: {exc}") from exc
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._reads = DriverReads(self.engine)
        self.upgraded_from: int | None = None  # the schema version this open upgraded from, if it did
        self._term_documents: dict[str, tuple[int, int, float]] = {}  # FTS5 phrase -> (count, of total, when)
        try:
            self._check_schema(create, upgrade)
        except BaseException:
            self.engine.dispose()
            raise

    def _check_schema(self, create: bool, upgrade: bool) -> None:
        where = self.where
        with self.translate_errors("cannot open catalog"):
            with self.engine.begin() as conn:
                has_meta = self.engine.dialect.has_table(conn, MetaEntry.__tablename__)
                if not has_meta:
                    if not create:
                        raise CatalogError(f"{where} is not an mmsearch catalog")
                    if self.dialect == "sqlite" and self.engine.dialect.get_table_names(conn):
                        raise CatalogError(f"{where} holds other tables but no mmsearch catalog (damaged, or "
                                           "another program's database); move it aside or give another --db")
                    Base.metadata.create_all(conn)
                    text_index.create(conn, self.dialect)
                    conn.execute(MetaEntry.__table__.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                    _store_vectors_inline(conn)
                    return
                row = conn.execute(select(MetaEntry.value).where(MetaEntry.key == "schema_version")).scalar()
        version = _schema_version(row, where)
        if version > SCHEMA_VERSION:
            raise CatalogError(f"catalog {where} was written by a newer mmsearch (schema version {version}; "
                               f"this version reads up to {SCHEMA_VERSION}); upgrade mmsearch to open it")
        if version < SCHEMA_VERSION:
            if not upgrade:
                raise CatalogError(f"catalog {where} has schema version {version}; run `mmsearch migrate` "
                                   f"to upgrade it to {SCHEMA_VERSION}")
            from indexer.catalog_upgrade import upgrade as run_upgrade

            with self.translate_errors("cannot upgrade catalog"):
                self.upgraded_from = run_upgrade(self)
        if self.dialect == "postgresql":
            try:
                with self.engine.begin() as conn:
                    _store_vectors_inline(conn)
            except DBAPIError as exc:  # e.g. a role that does not own the table: only write speed is at stake
                log.warning("catalog %s: could not set item_vectors' storage (%s); vectors are stored as "
                            "PostgreSQL's defaults say", self.where, database_failure(exc))

    def schema_version(self) -> int:
        with self.session() as s:
            return _schema_version(s.scalar(select(MetaEntry.value).where(MetaEntry.key == "schema_version")),
                                   self.where)

    @contextlib.contextmanager
    def translate_errors(self, what: str = "catalog") -> Iterator[None]:
        """Database failures inside the block become CatalogError with a short message (never SQL or
        parameters); constraint violations (IntegrityError) pass through for the caller to handle."""
        try:
            yield
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise CatalogError(f"{what} {self.where}: {database_failure(exc)}") from exc

    def close(self) -> None:
        self._reads.close()
        self.engine.dispose()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A read (or ad-hoc) session, committed on success, rolled back on error."""
        with self.translate_errors(), self._sessions() as s, s.begin():
            yield s

    def read(self, statement, params: dict) -> list[tuple]:
        """Rows of one of the request path's prepared SELECTs (see indexer/reads.py: kept connections, no
        per-execution SQLAlchemy machinery)."""
        with self.translate_errors():
            return self._reads.rows(statement, params)[1]

    @contextlib.contextmanager
    def write(self, collection_id: int) -> Iterator[tuple[Session, int]]:
        """A write transaction on one collection: yields (session, rev). The collection's revision is bumped
        first, which takes the write lock (SQLite) / row lock (PostgreSQL) so writers are serialised and
        revisions are committed in order. Write items with insert_items / update_items / delete_items."""
        with self.translate_errors(), self._sessions() as s, s.begin():
            rev = s.execute(update(Collection).where(Collection.id == collection_id)
                            .values(revision=Collection.revision + 1).returning(Collection.revision)).scalar()
            if rev is None:
                raise NotFound(f"collection id {collection_id} no longer exists")
            yield s, rev

    # ---- collections --------------------------------------------------------------------------------------

    def create_collection(self, name: str, *, encoder_name: str, encoder_family: str, encoder_digest: str,
                          dim: int, index_spec: str = "auto", index_memory: int | None = None,
                          text_fields: Sequence[str] = ()) -> Collection:
        check_collection_name(name)
        fields = text_index.check_text_fields(text_fields)
        with self.session() as s:
            if s.scalar(select(Collection.id).where(Collection.name == name)) is not None:
                raise Conflict(f"collection {name!r} already exists")
            coll = Collection(name=name, encoder_name=encoder_name, encoder_family=encoder_family,
                              encoder_digest=encoder_digest, dim=int(dim), index_spec=index_spec,
                              index_memory=index_memory, live_count=0, text_fields=fields)
            s.add(coll)
            s.flush()
            return coll

    def get_collection(self, name: str) -> Collection:
        with self.session() as s:
            coll = s.scalar(select(Collection).where(Collection.name == name))
        if coll is None:
            raise NotFound(f"no collection named {name!r}")
        return coll

    def find_collection(self, name: str) -> Collection | None:
        with self.session() as s:
            return s.scalar(select(Collection).where(Collection.name == name))

    def list_collections(self) -> list[Collection]:
        with self.session() as s:
            return list(s.scalars(select(Collection).order_by(Collection.name)))

    def collection_state(self, name: str) -> tuple[str, int, int] | None:
        """(uid, revision, purged_rev) of the collection called `name`, or None: one cheap query that tells a
        cached handle it is still current (a dropped and re-created collection has a new uid) and how far
        its index must catch up."""
        rows = self.read(_STATE_BY_NAME, {"name": name})
        row = rows[0] if rows else None
        return None if row is None else (row[0], int(row[1]), int(row[2]))

    def revision(self, collection_id: int) -> tuple[int, int]:
        """(revision, purged_rev) of a collection, one cheap query."""
        rows = self.read(_REVISION_BY_ID, {"cid": collection_id})
        row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"collection id {collection_id} no longer exists")
        return int(row[0]), int(row[1])

    def set_index_spec(self, collection_id: int, spec: str, index_memory: int | None = None, *,
                       keep_memory: bool = True) -> None:
        values: dict = {"index_spec": spec}
        if not keep_memory:
            values["index_memory"] = index_memory
        with self.session() as s:
            s.execute(update(Collection).where(Collection.id == collection_id).values(**values))

    def drop_collection(self, collection_id: int) -> None:
        with self.session() as s:
            job_ids = select(Job.id).where(Job.collection_id == collection_id).scalar_subquery()
            s.execute(JobError.__table__.delete().where(JobError.job_id.in_(job_ids)))
            s.execute(Job.__table__.delete().where(Job.collection_id == collection_id))
            keys = select(MetaKey.id).where(MetaKey.collection_id == collection_id).scalar_subquery()
            for table in META_TABLES:
                s.execute(table.__table__.delete().where(table.key_id.in_(keys)))
            s.execute(MetaKey.__table__.delete().where(MetaKey.collection_id == collection_id))
            text_index.delete_collection(s.connection(), self.dialect, collection_id)
            s.execute(ItemVector.__table__.delete().where(ItemVector.item_id.in_(
                select(Item.id).where(Item.collection_id == collection_id).scalar_subquery())))
            s.execute(Item.__table__.delete().where(Item.collection_id == collection_id))
            s.execute(Collection.__table__.delete().where(Collection.id == collection_id))

    # ---- items: reads -------------------------------------------------------------------------------------

    def live(self, collection_id: int, ids: Sequence[int] | None = None):
        """The WHERE clause selecting the live items of a collection (combine with filters), or only those
        among `ids`. Written `deleted = false` (not IS), the form SQLite needs to use the partial index on
        live content."""
        if ids is not None:
            return _live_by_ids(collection_id, [int(i) for i in ids])
        return (Item.collection_id == collection_id) & (Item.deleted == false())

    def count(self, collection_id: int) -> int:
        """Live items of a collection (kept in the collection's row by every write, so it is one lookup)."""
        with self.session() as s:
            n = s.scalar(select(Collection.live_count).where(Collection.id == collection_id))
        if n is None:
            raise NotFound(f"collection id {collection_id} no longer exists")
        return int(n)

    def items_by_id(self, collection_id: int, ids: Sequence[int], *, with_vectors: bool = True) -> dict[int, ItemRow]:
        """The live items among `ids` (with `vector` None unless `with_vectors`)."""
        statement = _LIVE_ITEMS_BY_ID if with_vectors else _LIVE_ITEMS_BY_ID_NO_VECTOR
        out: dict[int, ItemRow] = {}
        for chunk in _chunks([int(i) for i in ids], BIND_CHUNK):
            with self.translate_errors():
                columns, rows = self._reads.rows(statement, {"cid": collection_id, "ids": chunk})
            for row in rows:
                item = ItemRow(**dict(zip(columns, row)))
                out[item.id] = item
        return out

    def vectors_by_id(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, their vectors (n, dim) float32) among `ids`, in the order given; ids without a vector
        (deleted meanwhile) are left out. The re-ranking read: primary-key lookups on item_vectors only."""
        want = [int(i) for i in ids]
        found: dict[int, bytes] = {}
        for chunk in _chunks(want, BIND_CHUNK):
            for item_id, blob in self.read(_VECTORS_BY_ID, {"ids": chunk}):
                found[int(item_id)] = blob
        order = [i for i in want if i in found]
        if not order:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        vecs = np.frombuffer(b"".join(found[i] for i in order), dtype="<f4").reshape(len(order), dim)
        return np.asarray(order, dtype=np.int64), vecs.astype(np.float32, copy=False)

    def select_ids(self, collection_id: int, where=None, *, ids: Sequence[int] | None = None,
                   limit: int | None = None, tombstones: bool = False) -> np.ndarray:
        """Ids (int64 array) of the live items (among `ids`, when given) matching `where`: an ItemFilter
        (search/filters.py) or an SQLAlchemy condition over Item columns. Without `ids`, a filter with
        joins is answered from the metadata index; with them, each id is checked. `tombstones` (without
        `ids`): deleted items not yet purged may be among the ids, for a caller that intersects them with an
        index caught up with the catalog (the deletes are out of it): a filter on built-in columns then reads
        its index alone, not each item row too (1M items, `width >=` matching 100,000: 61 ms rather than
        527 ms). The ids come back in one string the database aggregates, not as a row each (the same
        100,000 ids: 12 ms rather than 61 ms)."""
        with self.filter_errors(), self.session() as s:
            return self._matching_ids(s, collection_id, where, ids, limit, tombstones=tombstones)

    def _id_array(self, s: Session, stmt) -> np.ndarray:
        """The ids a one-column SELECT returns, as one comma-separated string aggregated by the database."""
        ids = stmt.subquery().c[0]
        if self.dialect == "sqlite":
            joined = func.group_concat(ids)
        else:
            joined = func.string_agg(cast(ids, Text), literal(","))
        text_ids = s.scalar(select(joined))
        if not text_ids:
            return np.zeros(0, np.int64)
        return np.fromstring(text_ids, dtype=np.int64, sep=",")

    @contextlib.contextmanager
    def filter_errors(self) -> Iterator[None]:
        """A filter the database cannot run (too large for it) becomes InvalidInput; any other database
        failure CatalogError. Neither message carries the statement or its parameters."""
        try:
            yield
        except IntegrityError:
            raise
        except (DBAPIError, CatalogError) as exc:
            cause = exc if isinstance(exc, DBAPIError) else exc.__cause__
            if isinstance(cause, DBAPIError) and _too_complex(cause):
                raise InvalidInput("the filter is too large for the catalog database; use fewer terms "
                                   "(an IN list instead of many ORs)") from None
            if isinstance(exc, CatalogError):
                raise
            raise CatalogError(f"catalog {self.where}: {database_failure(exc)}") from exc

    def _matching_ids(self, s: Session, collection_id: int, where, ids: Sequence[int] | None,
                      limit: int | None = None, *, tombstones: bool = False) -> np.ndarray:
        if ids is None:
            return self._id_array(s, self.ids_statement(collection_id, where, limit=limit, tombstones=tombstones))
        found: list[np.ndarray] = []
        count = 0
        for chunk in _chunks([int(i) for i in ids], BIND_CHUNK):
            found.append(self._id_array(s, self.ids_statement(collection_id, where, ids=chunk,
                                                              limit=None if limit is None else limit - count)))
            count += len(found[-1])
            if limit is not None and count >= limit:
                break
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    def ids_statement(self, collection_id: int, where, *, ids: Sequence[int] | None = None,
                      limit: int | None = None, tombstones: bool = False):
        """The SELECT of item ids that select_ids runs (at most BIND_CHUNK `ids`): a scan that starts from
        the metadata index when the filter has joins and no ids are given (and reads nothing else when the
        joins decide the filter alone), else a check of each row. `tombstones`: see select_ids."""
        flt = as_filter(where)
        if ids is None and flt is not None and flt.joins:
            (first, first_on), rest = flt.joins[0], flt.joins[1:]
            if flt.residual is None:  # the metadata index holds live items only: it alone answers
                stmt = select(first.c.item_id).select_from(first)
                link = first.c.item_id
            else:
                stmt = select(Item.id).select_from(Item).join(first, and_(first.c.item_id == Item.id, first_on))
                link = Item.id
            for table, on in rest:
                stmt = stmt.join(table, and_(table.c.item_id == link, on))
            if flt.residual is None:
                stmt = stmt.where(first_on)
            else:
                live = Item.collection_id == collection_id
                stmt = stmt.where(live if tombstones else self.live(collection_id), flt.residual)
            stmt = stmt.params({FILTER_COLLECTION: collection_id})
        else:
            live = (Item.collection_id == collection_id if tombstones and ids is None
                    else self.live(collection_id, ids))
            stmt = select(Item.id).where(live)
            if flt is not None:
                stmt = stmt.where(flt.condition)
        return stmt if limit is None else stmt.limit(limit)

    def keyword_search(self, collection_id: int, keywords: str, where=None, *, limit: int = 100
                       ) -> list[tuple[int, float]]:
        """The live items (matching `where`, an ItemFilter or condition, when given) whose text holds every
        word of `keywords`, best first: [(id, score)], at most `limit`. A query with no words matches nothing.
        The ranking: bm25 on SQLite, ts_rank on PostgreSQL (scores of the two are not comparable)."""
        terms = text_index.query_terms(keywords)
        if not terms or limit <= 0:
            return []
        params = {"cid": int(collection_id), "n": int(limit)}
        ranking = "bm25"
        if self.dialect == "sqlite":
            params["q"] = text_index.fts5_query(terms)
            ranking, params["rank_q"] = self._ranking(terms)
        else:
            params["q"] = text_index.tsquery(terms)
        flt = as_filter(where)
        if flt is None and self.dialect == "sqlite":
            rows = self._ranked_then_checked(params, ranking)
        elif flt is None:
            rows = self.read(_PG_TEXT_RANKED, params)
        else:
            with self.filter_errors(), self.session() as s:
                rows = s.execute(_keyword_statement(self.dialect, flt.condition, ranking), params).all()
        return [(int(i), float(score)) for i, score in rows]

    def _ranking(self, terms: list[list[str]]) -> tuple[str, str]:
        """SQLite: how to rank a query's matches (see _fts_ranking) and the query of its ranking words."""
        import time

        total = int(self.read(_DOCUMENTS, {})[0][0])
        now = time.monotonic()
        cache = self._term_documents
        rare = []
        for term in terms:
            phrase = text_index.fts5_query([term])
            known = cache.get(phrase)
            if known is None or abs(total - known[1]) > known[1] // 10 or now - known[2] > TERM_CACHE_S:
                if len(cache) >= TERM_CACHE:
                    cache.clear()
                count = int(self.read(_TERM_DOCUMENTS, {"q": phrase, "cap": (total + 1) // 2 + 1})[0][0])
                known = cache[phrase] = (count, total, now)
            if 2 * known[0] < total:  # FTS5's idf is above its floor
                rare.append(term)
        if len(rare) == len(terms):
            return "bm25", ""
        return ("split", text_index.fts5_query(rare)) if rare else ("none", "")

    def _ranked_then_checked(self, params: dict, ranking: str) -> list[tuple]:
        """SQLite keyword matches without a filter (see _fts_ranked): a few rounds of rank-then-check, then
        the join that checks every match."""
        limit = params["n"]
        fetch = max(2 * limit, 64)
        for _ in range(3):
            ranked = self.read(_FTS_RANKED[ranking], {"q": params["q"], "rank_q": params["rank_q"], "m": fetch})
            live: set[int] = set()
            for chunk in _chunks([int(r[0]) for r in ranked], BIND_CHUNK):
                live.update(int(r[0]) for r in self.read(_LIVE_IDS, {"cid": params["cid"], "ids": chunk}))
            kept = [r for r in ranked if int(r[0]) in live]
            if len(kept) >= limit or len(ranked) < fetch:  # enough, or every match was seen
                return kept[:limit]
            fetch *= 4
        return self.read(_SQLITE_KEYWORDS[ranking], params)  # the collection holds few of the matches

    def existing_uris(self, collection_id: int, uris: Sequence[str]) -> dict[str, tuple[int, str]]:
        """uri -> (id, sha256) for the live items among `uris`."""
        with self.session() as s:
            return self.live_by_uri(s, collection_id, uris)

    def live_by_uri(self, session: Session, collection_id: int, uris: Sequence[str]) -> dict[str, tuple[int, str]]:
        """uri -> (id, sha256) for the live items among `uris`, inside the caller's session."""
        out: dict[str, tuple[int, str]] = {}
        for chunk in _chunks(list(dict.fromkeys(uris)), BIND_CHUNK):
            for i, uri, sha in session.execute(select(Item.id, Item.uri, Item.sha256)
                                               .where(self.live(collection_id), self._among(Item.uri, chunk))):
                out[uri] = (i, sha)
        return out

    def existing_shas(self, session: Session, collection_id: int, shas: Sequence[str]) -> dict[str, int]:
        """sha256 -> id for the live items among `shas`, inside the caller's (write) session."""
        out: dict[str, int] = {}
        for chunk in _chunks(list(dict.fromkeys(shas)), BIND_CHUNK):
            for i, sha in session.execute(select(Item.id, Item.sha256)
                                          .where(self.live(collection_id), self._among(Item.sha256, chunk))):
                out[sha] = i
        return out

    def _among(self, column, values: Sequence[str]):
        """`column IN (values)`; on PostgreSQL `column = ANY(:array)`, one parameter instead of one per value:
        the bulk job's per-commit probe (256 shas) runs ~4x faster (`python bench/pg_writes.py --probe`,
        bench/results/pg_probe.json)."""
        if self.dialect == "postgresql":
            return column == any_(bindparam(None, list(values), type_=ARRAY(String)))
        return column.in_(values)

    def changes_since(self, collection_id: int, rev: int, *, chunk: int = 20000
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        """Rows changed after `rev` as (ids, deleted flags, vectors (n, dim) float32, dim), in chunks so memory
        stays bounded (in (rev, id) order). Deleted rows carry a zero vector."""
        last_rev, last = rev, -1
        dim = self._dim(collection_id)
        while True:
            rows = self.read(_CHANGED_PAGE, {"cid": collection_id, "rev": rev, "after_rev": last_rev,
                                             "after": last, "n": chunk})
            if not rows:
                return
            last_rev, last = int(rows[-1][3]), int(rows[-1][0])
            yield (*_unpack(rows, dim), dim)

    def all_live(self, collection_id: int, *, chunk: int = 20000
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        """Every live row, in id order, as changes_since yields them."""
        last = -1
        dim = self._dim(collection_id)
        while True:
            rows = self.read(_LIVE_PAGE, {"cid": collection_id, "after": last, "n": chunk})
            if not rows:
                return
            last = int(rows[-1][0])
            yield (*_unpack(rows, dim), dim)

    def _dim(self, collection_id: int) -> int:
        with self.session() as s:
            dim = s.scalar(select(Collection.dim).where(Collection.id == collection_id))
        if dim is None:
            raise NotFound(f"collection id {collection_id} no longer exists")
        return int(dim)

    # ---- items: writes (inside `write()`) -------------------------------------------------------------------

    def insert_items(self, s: Session, collection_id: int, rev: int, items: Sequence[NewItem],
                     now: dt.datetime | None = None) -> np.ndarray:
        """Insert new items with their vectors and metadata index rows; returns their ids (in order)."""
        if not items:
            return np.zeros(0, np.int64)
        conn = s.connection()
        ids = self._new_item_ids(conn, len(items))
        stamp = self._datetime_param(now or utcnow())
        pg = self.dialect == "postgresql"
        # PostgreSQL's binary COPY takes the metadata object (psycopg dumps it); SQLite stores JSON text
        dumps = (lambda meta: meta or {}) if pg else (lambda meta: json.dumps(meta or {}))
        deleted = False if pg else 0
        _insert_rows(conn, self.dialect, "items", ITEM_COPY_COLUMNS,
                     [(i, collection_id, it.uri, it.sha256, int(it.width), int(it.height), it.caption,
                       dumps(it.meta), stamp, stamp, deleted, rev) for i, it in zip(ids, items)],
                     pg_types=ITEM_COPY_TYPES)
        _insert_rows(conn, self.dialect, "item_vectors", ("item_id", "vector"),
                     [(i, it.vector) for i, it in zip(ids, items)], pg_types=("int8", "bytea"))
        self._index_meta(conn, collection_id, [(i, it.meta) for i, it in zip(ids, items)])
        fields = self._text_fields(conn, collection_id)
        text_index.insert(conn, self.dialect, collection_id,
                          [(i, text_index.document(it.uri, it.caption, it.meta, fields)) for i, it in zip(ids, items)])
        s.execute(update(Collection).where(Collection.id == collection_id)
                  .values(live_count=Collection.live_count + len(items)))
        return np.asarray(ids, dtype=np.int64)

    def update_items(self, s: Session, collection_id: int, rev: int, changes: Sequence[tuple[int, NewItem]],
                     now: dt.datetime | None = None) -> None:
        """Replace live items in place (same ids): content, size, vector, and metadata / caption when given."""
        if not changes:
            return
        conn = s.connection()
        stamp = self._datetime_param(now or utcnow())
        mark = "?" if self.dialect == "sqlite" else "%s"
        conn.exec_driver_sql(
            f"UPDATE items SET sha256 = {mark}, width = {mark}, height = {mark}, updated = {mark}, rev = {mark} "
            f"WHERE id = {mark}",
            [(it.sha256, int(it.width), int(it.height), stamp, rev, i) for i, it in changes])
        with_meta = [(i, it.meta) for i, it in changes if it.meta is not None]
        if with_meta:
            conn.exec_driver_sql(f"UPDATE items SET meta = {mark} WHERE id = {mark}",
                                 [(json.dumps(meta), i) for i, meta in with_meta])
        with_caption = [(it.caption, i) for i, it in changes if it.caption is not None]
        if with_caption:
            conn.exec_driver_sql(f"UPDATE items SET caption = {mark} WHERE id = {mark}", with_caption)
        conn.exec_driver_sql(f"UPDATE item_vectors SET vector = {mark} WHERE item_id = {mark}",
                             [(it.vector, i) for i, it in changes])
        if with_meta:
            self._unindex_meta(conn, [i for i, _ in with_meta])
            self._index_meta(conn, collection_id, with_meta)
        retext = {i for i, _ in with_meta} | {i for _, i in with_caption}
        if retext:
            self._reindex_text(conn, collection_id, sorted(retext))

    def delete_items(self, s: Session, collection_id: int, rev: int, ids: Sequence[int]) -> None:
        """Soft-delete live items of the collection (their vectors and metadata index rows go now)."""
        conn = s.connection()
        now = utcnow()
        for chunk in _chunks([int(i) for i in ids], BIND_CHUNK):
            s.execute(update(Item).where(Item.id.in_(chunk)).values(deleted=True, rev=rev, updated=now)
                      .execution_options(synchronize_session=False))
            s.execute(ItemVector.__table__.delete().where(ItemVector.item_id.in_(chunk)))
            self._unindex_meta(conn, chunk)
            text_index.delete(conn, self.dialect, chunk)
        s.execute(update(Collection).where(Collection.id == collection_id)
                  .values(live_count=Collection.live_count - len(ids)))

    def delete_where(self, collection_id: int, where, *, ids: Sequence[int] | None = None) -> list[int]:
        """Soft-delete the live items (among `ids`, when given) matching `where` (an ItemFilter or an
        SQLAlchemy condition over Item, or None). Returns their ids."""
        with self.filter_errors(), self.write(collection_id) as (s, rev):
            ids = self._matching_ids(s, collection_id, where, ids).tolist()
            if ids:
                self.delete_items(s, collection_id, rev, ids)
        return ids

    def purge_deleted(self, collection_id: int, through_rev: int) -> int:
        """Drop tombstones with rev <= through_rev (every index on disk has applied them)."""
        with self.session() as s:
            res = s.execute(Item.__table__.delete().where(Item.collection_id == collection_id,
                                                          Item.deleted == true(), Item.rev <= through_rev))
            s.execute(update(Collection).where(Collection.id == collection_id,
                                               Collection.purged_rev < through_rev)
                      .values(purged_rev=through_rev))
            return res.rowcount or 0

    def analyze(self) -> None:
        """Refresh the query planner's statistics (after bulk writes): SQLite plans metadata and column
        filters from them. Sampled on SQLite (analysis_limit), so it takes well under a second."""
        with self.translate_errors():
            with self.engine.begin() as conn:
                if self.dialect == "sqlite":
                    conn.exec_driver_sql("PRAGMA analysis_limit=2000")
                    conn.exec_driver_sql("ANALYZE")
                else:
                    for table in ("items", "item_vectors", "meta_keys", "meta_num", "meta_str", "item_text"):
                        conn.exec_driver_sql(f"ANALYZE {table}")

    def _text_fields(self, conn, collection_id: int) -> list[str]:
        fields = conn.execute(select(Collection.text_fields).where(Collection.id == collection_id)).scalar()
        return list(fields or [])

    def _reindex_text(self, conn, collection_id: int, item_ids: Sequence[int],
                      fields: Sequence[str] | None = None) -> None:
        """Rewrite the text index documents of live items from their stored uri, caption and metadata."""
        fields = self._text_fields(conn, collection_id) if fields is None else fields
        for chunk in _chunks([int(i) for i in item_ids], BIND_CHUNK):
            rows = conn.execute(select(Item.id, Item.uri, Item.caption, Item.meta)
                                .where(Item.id.in_(chunk), Item.deleted == false())).all()
            text_index.delete(conn, self.dialect, chunk)
            text_index.insert(conn, self.dialect, collection_id,
                              [(int(i), text_index.document(uri, caption, meta, fields))
                               for i, uri, caption, meta in rows])

    def set_text_fields(self, collection_id: int, fields: Sequence[str]) -> list[str]:
        """Change the metadata fields a collection's text index holds; every live item's document is
        rewritten in the same transaction. Returns the fields as stored."""
        fields = text_index.check_text_fields(fields)
        with self.write(collection_id) as (s, _rev):
            conn = s.connection()
            s.execute(update(Collection).where(Collection.id == collection_id).values(text_fields=fields))
            self.reindex_text(conn, collection_id, fields)
        return fields

    def reindex_text(self, conn, collection_id: int, fields: Sequence[str]) -> int:
        """Rewrite the documents of every live item of a collection (on the caller's transaction); used when
        its text fields change and by the catalog upgrade. Returns how many items it indexed."""
        last, done = -1, 0
        while True:
            ids = [int(i) for i in conn.execute(select(Item.id).where(
                (Item.collection_id + 0) == collection_id, Item.deleted == false(), Item.id > last)
                .order_by(Item.id).limit(20_000)).scalars()]
            if not ids:
                return done
            self._reindex_text(conn, collection_id, ids, fields)
            done += len(ids)
            last = ids[-1]

    def _new_item_ids(self, conn, n: int) -> list[int]:
        if self.dialect == "sqlite":  # the write lock is held (Catalog.write bumped the revision first)
            top = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM items").scalar()
            return list(range(int(top) + 1, int(top) + 1 + n))
        rows = conn.exec_driver_sql("SELECT nextval(pg_get_serial_sequence('items', 'id')) "
                                    "FROM generate_series(1, %s)", (n,)).all()
        return [int(r[0]) for r in rows]

    def _datetime_param(self, value: dt.datetime):
        process = Item.__table__.c.created.type.dialect_impl(self.engine.dialect).bind_processor(self.engine.dialect)
        return process(value) if process else value

    def _index_meta(self, conn, collection_id: int, metas: Sequence[tuple[int, dict | None]]) -> None:
        """Metadata index rows for items (id, meta), creating keys the collection has not had before."""
        sqlite = self.dialect == "sqlite"
        entries = [(item_id, e) for item_id, meta in metas for e in meta_entries(meta, sqlite=sqlite)]
        if not entries:
            return
        keys = self._key_ids(conn, collection_id, {(path, kind) for _, (path, kind, _) in entries})
        nums = [(keys[(path, kind)], value, item_id) for item_id, (path, kind, value) in entries if kind != "s"]
        strs = [(keys[(path, kind)], value, item_id) for item_id, (path, kind, value) in entries if kind == "s"]
        if nums:
            _insert_rows(conn, self.dialect, "meta_num", ("key_id", "value", "item_id"), nums)
        if strs:
            _insert_rows(conn, self.dialect, "meta_str", ("key_id", "value", "item_id"), strs)

    def _unindex_meta(self, conn, item_ids: Sequence[int]) -> None:
        for table in META_TABLES:
            for chunk in _chunks([int(i) for i in item_ids], BIND_CHUNK):
                conn.execute(table.__table__.delete().where(table.item_id.in_(chunk)))

    def _key_ids(self, conn, collection_id: int, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """(path, kind) -> meta_keys id for the collection, inserting the missing ones (under the write lock)."""
        def lookup(paths):
            out = {}
            for chunk in _chunks(sorted(paths), BIND_CHUNK):
                for key_id, path, kind in conn.execute(select(MetaKey.id, MetaKey.path, MetaKey.kind).where(
                        MetaKey.collection_id == collection_id, MetaKey.path.in_(chunk))):
                    out[(path, kind)] = int(key_id)
            return out

        known = lookup({path for path, _ in wanted})
        missing = sorted(wanted - set(known))
        if missing:
            conn.execute(MetaKey.__table__.insert(),
                         [{"collection_id": collection_id, "path": path, "kind": kind} for path, kind in missing])
            known.update(lookup({path for path, _ in missing}))
        return known

    # ---- jobs ---------------------------------------------------------------------------------------------

    def list_jobs(self, collection_id: int | None = None, *, limit: int = 50) -> list[Job]:
        with self.session() as s:
            stmt = select(Job).order_by(Job.id.desc()).limit(limit)
            if collection_id is not None:
                stmt = stmt.where(Job.collection_id == collection_id)
            return list(s.scalars(stmt))

    def get_job(self, job_id: int) -> Job:
        with self.session() as s:
            job = s.get(Job, int(job_id))
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def job_errors(self, job_id: int, *, limit: int | None = None) -> list[JobError]:
        with self.session() as s:
            stmt = select(JobError).where(JobError.job_id == job_id).order_by(JobError.id)
            if limit is not None:
                stmt = stmt.limit(limit)
            return list(s.scalars(stmt))

    def mark_stale_jobs(self, collection_id: int) -> list[Job]:
        """Jobs still marked running whose process is gone (same host, pid dead): mark them interrupted."""
        host = socket.gethostname()
        stale: list[Job] = []
        with self.session() as s:
            for job in s.scalars(select(Job).where(Job.collection_id == collection_id, Job.state == "running")):
                if job.host == host and not _pid_alive(job.pid):
                    job.state = "interrupted"
                    job.message = "the process ended without finishing (killed or crashed); rerun to resume"
                    stale.append(job)
        return stale


def _unpack(rows: list[tuple], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    dead = np.fromiter((bool(r[1]) or r[2] is None for r in rows), dtype=bool, count=len(rows))
    vecs = np.zeros((len(rows), dim), dtype=np.float32)
    live = np.flatnonzero(~dead)
    if len(live):
        vecs[live] = np.frombuffer(b"".join(rows[j][2] for j in live), dtype="<f4").reshape(len(live), dim)
    return ids, dead, vecs


def _insert_rows(conn, dialect: str, table: str, columns: Sequence[str], rows: list[tuple],
                 pg_types: Sequence[str] | None = None) -> None:
    """Bulk insert: one executemany on SQLite, COPY on PostgreSQL (both on the caller's transaction).
    `pg_types` (PostgreSQL type names of the columns): a binary COPY, which sends a vector as its 3 KB
    of bytes rather than 6 KB of hex text for the server to parse (its rows: Python values of those types;
    `numeric` has no binary dumper for floats, so the metadata tables go as text)."""
    if not rows:
        return
    names = ", ".join(columns)
    if dialect == "sqlite":
        conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", rows)
        return
    raw = conn.connection.dbapi_connection
    statement = f"COPY {table} ({names}) FROM STDIN" + (" (FORMAT BINARY)" if pg_types else "")
    dbapi = conn.dialect.loaded_dbapi
    try:
        with raw.cursor() as cur, cur.copy(statement) as copy:
            if pg_types:
                copy.set_types(list(pg_types))
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as exc:  # as SQLAlchemy raises it, so an IntegrityError is one here too
        raise DBAPIError.instance(statement, None, exc, dbapi.Error, dialect=conn.dialect) from None


# PostgreSQL keeps a vector (3 KB at 768-d) in the item_vectors row, uncompressed: by default a value over
# ~2 KB is first run through pglz (random floats never compress) and then moved out of line into the TOAST
# table (a second heap and index insert per vector), the largest single cost of a bulk commit. EXTERNAL: never
# compressed; a target of 8160 bytes (the most a page takes): moved out of line only when a row would not fit.
_VECTOR_STORAGE = ("ALTER TABLE item_vectors ALTER COLUMN vector SET STORAGE EXTERNAL",
                   "ALTER TABLE item_vectors SET (toast_tuple_target = 8160)")


def _store_vectors_inline(conn) -> None:
    """Set item_vectors' storage (above) on PostgreSQL, when a catalog does not have it yet (new catalogs and
    ones made before: it applies to rows written from then on). A no-op on SQLite."""
    if conn.dialect.name != "postgresql":
        return
    found = conn.exec_driver_sql(
        "SELECT a.attstorage, c.reloptions FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE a.attrelid = to_regclass('item_vectors') AND a.attname = 'vector'").first()
    if found is not None and (found[0] != "e" or "toast_tuple_target=8160" not in (found[1] or [])):
        for statement in _VECTOR_STORAGE:
            conn.exec_driver_sql(statement)


def _schema_version(row, where: str) -> int:
    try:
        return int(row or 0)
    except ValueError:
        raise CatalogError(f"catalog {where} records schema version {row!r}, which is not a number") from None


def database_failure(exc: DBAPIError) -> str:
    """A short description of a database failure for users: the driver's own text for SQLite (fixed
    phrases such as "database disk image is malformed") and connection problems, the kind of error
    otherwise. Never the statement or its parameters."""
    orig = exc.orig
    text = str(orig).strip().splitlines()[0][:200] if orig is not None and str(orig).strip() else ""
    if exc.connection_invalidated or type(orig).__module__.startswith("sqlite3") or \
            type(exc).__name__ == "OperationalError":
        return text or type(orig).__name__
    return f"the database refused a statement ({type(orig).__name__})"


_TOO_COMPLEX = ("expression tree is too large", "parser stack overflow", "too many sql variables",
                "too many terms", "stack depth limit exceeded", "too many arguments", "statement too complex",
                "string or blob too big", "too many columns", "at most 64 tables", "out of memory")


def _too_complex(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(phrase in text for phrase in _TOO_COMPLEX)


def check_collection_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise InvalidInput("collection name must be 1-200 characters")
    bad = set(name) - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if bad or name.startswith("."):
        raise InvalidInput(f"collection name {name!r}: use letters, digits, '.', '_' and '-' (not starting with '.')")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _chunks(seq: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
