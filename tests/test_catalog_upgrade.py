"""Catalogs written by schema version 1 (the code on main before the v2 layout) are upgraded in place when
opened and by `mmsearch migrate`, with nothing lost: a SQLite file made by that code (tests/data/catalog_v1,
see tests/data/make_catalog_v1.py) and, on PostgreSQL, tables created by the v1 DDL."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, select, text

from mmsearch.errors import CatalogError
from indexer.catalog import SCHEMA_VERSION, Catalog, Collection, Item, Job, JobError, database_url
from indexer.store import Store
from indexer_helpers import assert_index_matches_catalog
from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from search.cli import main
from search.filters import compile_filter

DATA = Path(__file__).resolve().parent / "data"


def _v1_items(db: Path) -> dict[int, dict]:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, collection_id, uri, sha256, width, height, caption, meta, vector, deleted, rev "
                        "FROM items").fetchall()
    conn.close()
    return {r[0]: dict(collection_id=r[1], uri=r[2], sha256=r[3], width=r[4], height=r[5], caption=r[6],
                       meta=json.loads(r[7]), vector=r[8], deleted=bool(r[9]), rev=r[10]) for r in rows}


def _check_upgraded(cat: Catalog, before: dict[int, dict]) -> None:
    assert cat.schema_version() == SCHEMA_VERSION
    columns = {c["name"] for c in inspect(cat.engine).get_columns("items")}
    assert "vector" not in columns
    indexes = {ix["name"] for ix in inspect(cat.engine).get_indexes("items")}
    assert {"ix_items_width", "ix_items_height", "ix_items_created", "ix_items_uri", "ix_items_rev"} <= indexes
    with cat.session() as s:
        after = {r.id: r for r in s.execute(select(*Item.__table__.c))}
        colls = {c.id: c for c in s.scalars(select(Collection))}
    assert sorted(after) == sorted(before)  # tombstones included
    for item_id, old in before.items():
        row = after[item_id]
        for key in ("collection_id", "uri", "sha256", "width", "height", "caption", "meta", "deleted", "rev"):
            assert getattr(row, key) == old[key], (item_id, key)
    for cid, coll in colls.items():
        assert coll.live_count == sum(1 for r in before.values() if r["collection_id"] == cid and not r["deleted"])
        live = [i for i, r in before.items() if r["collection_id"] == cid and not r["deleted"]]
        got = cat.items_by_id(cid, live)
        assert sorted(got) == sorted(live)
        for i in live:
            assert got[i].vector == before[i]["vector"]  # the same bytes, moved
        ids, vecs = cat.vectors_by_id(live, coll.dim)
        assert ids.tolist() == live and vecs.shape == (len(live), coll.dim)
    # the metadata index was built from every live item's metadata: filters agree with the stored JSON
    photos = next(c for c in colls.values() if c.name == "photos")
    live = {i: r for i, r in before.items() if r["collection_id"] == photos.id and not r["deleted"]}
    checks = {
        'meta.tag = "even"': lambda m: m["tag"] == "even",
        "meta.n >= 30": lambda m: m["n"] >= 30,
        "meta.f < 2.5": lambda m: m["f"] < 2.5,
        "meta.ok = true": lambda m: m["ok"] is True,
        "meta.exif.iso IN (100, 300)": lambda m: m["exif"]["iso"] in (100, 300),
        'meta.exif.make = "Ünïcode ☃"': lambda m: m["exif"]["make"] == "Ünïcode ☃",
        'meta.long = "' + "z" * 1000 + '"': lambda m: m.get("long") == "z" * 1000,
        'meta.long > "z"': lambda m: m.get("long", "") > "z",
        "NOT meta.none = 1 AND width < 120": lambda m: True,
    }
    for flt, pred in checks.items():
        want = {i for i, r in live.items() if pred(r["meta"]) and (r["width"] < 120 or "width" not in flt)}
        got = set(cat.select_ids(photos.id, compile_filter(flt, Item, cat.dialect)).tolist())
        assert got == want, flt
    with cat.session() as s:
        assert s.scalar(select(Job.added).where(Job.collection_id == photos.id)) == 40
        assert s.scalar(select(JobError.reason)) == "truncated image"


def test_a_v1_sqlite_catalog_is_upgraded_on_open(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DATA / "catalog_v1", data)
    before = _v1_items(data / "catalog.db")
    assert any(r["deleted"] for r in before.values()) and len(before) == 46
    with pytest.raises(CatalogError, match="schema version 1; run `mmsearch migrate`"):
        Catalog(database_url(data), upgrade=False)
    cat = Catalog(database_url(data))
    assert cat.upgraded_from == 1
    _check_upgraded(cat, before)
    cat.close()
    assert Catalog(database_url(data)).upgraded_from is None  # once
    # the old index files (format 1) are rebuilt from the catalog; the collection's index kind is kept
    with Store(data) as store:
        photos = store.collection("photos")
        some = photos.get(store.catalog.select_ids(photos.id)[:5])
        for item in some.values():
            assert photos.search(item.vector_array(), k=1)[0][0].id == item.id
        assert_index_matches_catalog(photos)
        other = store.collection("other")
        assert other.index.spec.kind == "hnsw" and other.index.ntotal == 6


def test_migrate_command_and_vacuum(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(DATA / "catalog_v1", data)
    before = _v1_items(data / "catalog.db")
    assert main(["migrate", "--data-dir", str(data)]) == 0
    assert f"upgraded from schema version 1 to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["migrate", "--data-dir", str(data), "--vacuum"]) == 0
    out = capsys.readouterr().out
    assert "nothing to upgrade" in out and "vacuumed" in out
    conn = sqlite3.connect(data / "catalog.db")
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    cat = Catalog(database_url(data))
    _check_upgraded(cat, before)
    cat.close()
    assert main(["migrate", "--data-dir", str(tmp_path / "nothing-here")]) == 7


def test_a_v1_postgresql_catalog_is_upgraded_on_open(pg_url):  # noqa: F811
    """Tables made by the v1 DDL (tests/data/catalog_v1_postgresql.sql) holding the SQLite fixture's rows."""
    from sqlalchemy import create_engine

    sqlite_db = DATA / "catalog_v1" / "catalog.db"
    before = _v1_items(sqlite_db)
    src = sqlite3.connect(sqlite_db)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql((DATA / "catalog_v1_postgresql.sql").read_text())
        conn.execute(text("INSERT INTO mmsearch_meta (key, value) VALUES ('schema_version', '1')"))
        for row in src.execute("SELECT id, name, uid, encoder_name, encoder_family, encoder_digest, dim, index_spec, "
                               "revision, purged_rev, created FROM collections"):
            conn.execute(text("INSERT INTO collections VALUES (:a, :b, :c, :d, :e, :f, :g, :h, :i, :j, :k)"),
                         dict(zip("abcdefghijk", row)))
        for row in src.execute("SELECT id, collection_id, uri, sha256, width, height, caption, meta, vector, created, "
                               "updated, deleted, rev FROM items"):
            values = dict(zip("abcdefghijklm", row))
            values["l"] = bool(values["l"])
            conn.execute(text("INSERT INTO items VALUES (:a, :b, :c, :d, :e, :f, :g, CAST(:h AS JSONB), :i, :j, :k, "
                              ":l, :m)"), values)
        for row in src.execute("SELECT id, collection_id, sources, options, state, message, resumed_from, host, pid, "
                               "seen, added, updated, skipped, failed, started, finished, decode_s, encode_s, "
                               "commit_s FROM jobs"):
            keys = [f"p{i}" for i in range(len(row))]
            conn.execute(text("INSERT INTO jobs VALUES (" + ", ".join(
                f"CAST(:{k} AS JSONB)" if i in (2, 3) else f":{k}" for i, k in enumerate(keys)) + ")"),
                dict(zip(keys, row)))
        for row in src.execute("SELECT id, job_id, uri, reason, created FROM job_errors"):
            conn.execute(text("INSERT INTO job_errors VALUES (:a, :b, :c, :d, :e)"), dict(zip("abcde", row)))
        for table in ("collections", "items", "jobs", "job_errors"):
            conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                 f"(SELECT max(id) FROM {table}))")
    engine.dispose()
    src.close()
    cat = Catalog(pg_url)
    assert cat.upgraded_from == 1
    _check_upgraded(cat, before)
    assert "ix_items_meta" not in {ix["name"] for ix in inspect(cat.engine).get_indexes("items")}
    photos = cat.get_collection("photos")
    with cat.write(photos.id) as (s, rev):  # new rows get fresh ids after the upgrade
        from indexer.catalog import NewItem

        new = cat.insert_items(s, photos.id, rev, [NewItem(uri="/new.jpg", sha256="f" * 64, width=1, height=1,
                                                           vector=np.zeros(8, "<f4").tobytes(), meta={"n": 99})])
    assert int(new[0]) > max(before)
    assert cat.select_ids(photos.id, compile_filter("meta.n = 99", Item, cat.dialect)).tolist() == new.tolist()
    cat.close()
