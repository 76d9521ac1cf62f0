"""In-place upgrades of older catalogs to the current schema (indexer/catalog.py), and VACUUM.

`Catalog` calls `upgrade` when it opens a catalog written by an older schema; `mmsearch migrate` does the
same and can then `vacuum` a SQLite file. Each upgrade runs in one transaction that holds the write lock
(BEGIN IMMEDIATE on SQLite, an exclusive lock on mmsearch_meta on PostgreSQL) and re-reads the version
first, so two processes opening an old catalog at once upgrade it once; a crash midway leaves it as it was.

Version 1 -> 2: vectors move from items.vector to item_vectors, every live item's metadata is indexed into
meta_keys / meta_num / meta_str, collections gain live_count and index_memory, items gain indexes on width,
height and created, and PostgreSQL's GIN index on items.meta (which the metadata index replaces) goes. The
items table loses its vector column: on SQLite by copying the table (what ALTER TABLE cannot do on every
SQLite version), so the upgrade needs free disk about the size of the catalog; `mmsearch migrate --vacuum`
then gives the space back and moves the file to the new page size.

Version 2 -> 3: the full-text index (indexer/text_index.py): collections gain `text_fields` (none for an
existing collection: its documents hold captions and file names; `mmsearch collection text-fields` names
metadata fields later), and item_text gets a document for every live item.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateTable

from mmsearch.errors import CatalogError
from indexer import catalog as cat

log = logging.getLogger("mmsearch.indexer")

SCAN_CHUNK = 20_000


def upgrade(catalog: "cat.Catalog") -> int | None:
    """Upgrade `catalog` to cat.SCHEMA_VERSION; returns the version it had (None: already current)."""
    engine = _locking_engine(catalog)
    try:
        with engine.begin() as conn:
            if catalog.dialect == "postgresql":
                conn.exec_driver_sql("LOCK TABLE mmsearch_meta IN EXCLUSIVE MODE")
            version = _version(conn)
            if version >= cat.SCHEMA_VERSION:
                return None
            if version not in _STEPS:
                raise CatalogError(f"catalog {catalog.where} has unknown schema version {version}")
            t0 = time.perf_counter()
            for step in range(version, cat.SCHEMA_VERSION):
                log.info("upgrading catalog %s from schema version %d to %d", catalog.where, step, step + 1)
                _STEPS[step](catalog, conn)
            conn.execute(cat.MetaEntry.__table__.update().where(cat.MetaEntry.key == "schema_version")
                         .values(value=str(cat.SCHEMA_VERSION)))
            log.info("catalog %s upgraded to schema version %d in %.1fs", catalog.where, cat.SCHEMA_VERSION,
                     time.perf_counter() - t0)
    finally:
        engine.dispose()
    catalog.analyze()
    return version


def vacuum(catalog: "cat.Catalog") -> tuple[int, int]:
    """Rewrite a SQLite catalog compactly, with cat.PAGE_SIZE pages; returns (bytes before, after).
    Needs free disk about the size of the file, and no other process using it."""
    import os

    if catalog.dialect != "sqlite":
        raise CatalogError("vacuum is for SQLite catalogs (PostgreSQL: run VACUUM FULL yourself)")
    path = catalog.engine.url.database
    before = os.path.getsize(path)
    raw = catalog.engine.raw_connection()
    try:
        dbapi = raw.dbapi_connection
        dbapi.isolation_level = None
        dbapi.execute("PRAGMA journal_mode=DELETE")  # the page size cannot change in WAL mode
        dbapi.execute(f"PRAGMA page_size={cat.PAGE_SIZE}")
        dbapi.execute("VACUUM")
        dbapi.execute("PRAGMA journal_mode=WAL")
    finally:
        raw.close()
    catalog.engine.dispose()
    return before, os.path.getsize(path)


def _locking_engine(catalog: "cat.Catalog"):
    """An engine whose transactions take the write lock at BEGIN (SQLite's default BEGIN waits until the
    first write, and a reader that then tries to write after another process committed fails)."""
    engine = create_engine(catalog.url, **({"connect_args": {"timeout": 60}} if catalog.dialect == "sqlite" else {}))
    if catalog.dialect == "sqlite":
        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we say BEGIN ourselves
            dbapi_conn.execute("PRAGMA busy_timeout=60000")

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


def _version(conn: Connection) -> int:
    row = conn.execute(select(cat.MetaEntry.value).where(cat.MetaEntry.key == "schema_version")).scalar()
    return int(row or 0)


def _upgrade_1_to_2(catalog: "cat.Catalog", conn: Connection) -> None:
    sqlite = catalog.dialect == "sqlite"
    cat.Base.metadata.create_all(conn, tables=[cat.ItemVector.__table__, cat.MetaKey.__table__,
                                               cat.MetaNum.__table__, cat.MetaStr.__table__])
    live = "deleted = 0" if sqlite else "deleted = false"
    length = "length" if sqlite else "octet_length"
    moved = conn.exec_driver_sql(f"INSERT INTO item_vectors (item_id, vector) SELECT id, vector FROM items "
                                 f"WHERE {live} AND {length}(vector) > 0").rowcount
    log.info("moved %s vectors out of the item rows", moved)

    last, indexed = -1, 0
    while True:
        rows = conn.execute(select(cat.Item.id, cat.Item.collection_id, cat.Item.meta)
                            .where(text(live), cat.Item.id > last).order_by(cat.Item.id).limit(SCAN_CHUNK)).all()
        if not rows:
            break
        by_collection: dict[int, list] = {}
        for item_id, cid, meta in rows:
            by_collection.setdefault(int(cid), []).append((int(item_id), meta))
        for cid, metas in by_collection.items():
            catalog._index_meta(conn, cid, metas)
        indexed += len(rows)
        last = int(rows[-1][0])
        log.info("indexed the metadata of %d items", indexed)

    if sqlite:
        _rebuild_items_without_vectors(conn)
    else:
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_items_meta")
        conn.exec_driver_sql("ALTER TABLE items DROP COLUMN vector")
        for index in cat.Item.__table__.indexes:
            if index.name in cat.ITEM_INDEXES_V2:
                index.create(conn, checkfirst=True)
    conn.exec_driver_sql("ALTER TABLE collections ADD COLUMN index_memory BIGINT")
    conn.exec_driver_sql("ALTER TABLE collections ADD COLUMN live_count BIGINT NOT NULL DEFAULT 0")
    conn.exec_driver_sql(f"UPDATE collections SET live_count = (SELECT count(*) FROM items "
                         f"WHERE items.collection_id = collections.id AND items.{live})")


def _upgrade_2_to_3(catalog: "cat.Catalog", conn: Connection) -> None:
    sqlite = catalog.dialect == "sqlite"
    conn.exec_driver_sql("ALTER TABLE collections ADD COLUMN text_fields " + ("JSON" if sqlite else "JSONB")
                         + " NOT NULL DEFAULT '[]'")
    cat.text_index.create(conn, catalog.dialect)
    for (cid,) in conn.exec_driver_sql("SELECT id FROM collections ORDER BY id").all():
        n = catalog.reindex_text(conn, int(cid), [])
        log.info("text index: %d items of collection id %d", n, cid)


_STEPS = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3}


def _rebuild_items_without_vectors(conn: Connection) -> None:
    """SQLite: items copied into a table of the current layout, which then takes the name and indexes."""
    ddl = str(CreateTable(cat.Item.__table__).compile(dialect=conn.dialect))
    conn.exec_driver_sql(ddl.replace("CREATE TABLE items ", "CREATE TABLE items_upgrade ", 1))
    columns = ", ".join(c.name for c in cat.Item.__table__.c)
    conn.exec_driver_sql(f"INSERT INTO items_upgrade ({columns}) SELECT {columns} FROM items")
    conn.exec_driver_sql("DROP TABLE items")
    conn.exec_driver_sql("ALTER TABLE items_upgrade RENAME TO items")
    for index in cat.Item.__table__.indexes:
        index.create(conn)
