"""The catalog on SQLite and on a real PostgreSQL server: schema version, collections, items, revisions,
constraints, filters from search/filters.py, and the Store facade over both."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from mmsearch.errors import CatalogError, Conflict, NotFound
from indexer.catalog import SCHEMA_VERSION, Catalog, Item, NewItem, database_url
from indexer.store import Store
from indexer_helpers import FakeBinding, add_rows, assert_index_matches_catalog, clustered
from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)

DIM = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return database_url(tmp_path / "data")
    return request.getfixturevalue("pg_url")


def test_sqlite_is_default_in_wal_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("MMSEARCH_DB", raising=False)
    url = database_url(tmp_path)
    assert url == "sqlite:///" + str(tmp_path / "catalog.db")
    monkeypatch.setenv("MMSEARCH_DB", "postgresql+psycopg://u@h/db")
    assert database_url(tmp_path).startswith("postgresql")
    assert database_url(tmp_path, "sqlite:///x.db") == "sqlite:///x.db"
    cat = Catalog(url)
    with cat.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    cat.close()


def test_schema_version_is_stored_and_newer_is_refused(db_url):
    cat = Catalog(db_url)
    with cat.session() as s:
        assert s.execute(text("SELECT value FROM mmsearch_meta WHERE key = 'schema_version'")).scalar() == str(SCHEMA_VERSION)
        s.execute(text("UPDATE mmsearch_meta SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION + 1)})
    cat.close()
    with pytest.raises(CatalogError, match=f"newer mmsearch .*schema version {SCHEMA_VERSION + 1}.*upgrade"):
        Catalog(db_url)


def test_bad_urls_are_clear_errors(tmp_path):
    with pytest.raises(CatalogError, match="not a valid SQLAlchemy URL"):
        Catalog("not a url")
    with pytest.raises(CatalogError, match="cannot open catalog"):
        Catalog("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_collections_items_and_revisions(db_url, tmp_path):
    cat = Catalog(db_url)
    coll = cat.create_collection("photos", encoder_name="m", encoder_family="siglip", encoder_digest="d" * 32, dim=DIM)
    with pytest.raises(Conflict):
        cat.create_collection("photos", encoder_name="m", encoder_family="siglip", encoder_digest="d", dim=DIM)
    with pytest.raises(NotFound):
        cat.get_collection("nope")
    assert [c.name for c in cat.list_collections()] == ["photos"]

    vec = np.arange(DIM, dtype=np.float32)
    blob = vec.astype("<f4").tobytes()
    with cat.write(coll.id) as (s, rev):
        assert rev == 1
        cat.insert_items(s, coll.id, rev, [NewItem(
            uri="/a.jpg", sha256="a" * 64, width=640, height=480, caption="a cat", vector=blob,
            meta={"tags": ["x", "y"], "year": 2020, "nested": {"k": 1.5}, "ok": True})])
    with cat.write(coll.id) as (s, rev):
        assert rev == 2
        cat.insert_items(s, coll.id, rev, [NewItem(uri="/b.jpg", sha256="b" * 64, width=10, height=10,
                                                   meta={}, vector=blob)])
    assert cat.revision(coll.id) == (2, 0)
    [(ids, dead, vecs, dim)] = list(cat.changes_since(coll.id, 1))
    assert dim == DIM and len(ids) == 1 and not dead.any()
    np.testing.assert_array_equal(vecs[0], vec)
    item = cat.items_by_id(coll.id, [1])[1]
    assert (item.uri, item.width, item.height, item.caption, item.deleted) == ("/a.jpg", 640, 480, "a cat", False)
    assert item.meta == {"tags": ["x", "y"], "year": 2020, "nested": {"k": 1.5}, "ok": True}
    assert item.created is not None and item.vector_array().dtype == np.float32

    # live content is unique per collection: the database refuses a second live row with the same sha256
    with pytest.raises(IntegrityError):
        with cat.write(coll.id) as (s, rev):
            cat.insert_items(s, coll.id, rev, [NewItem(uri="/copy.jpg", sha256="a" * 64, width=1, height=1,
                                                       vector=blob)])
    assert cat.revision(coll.id)[0] == 2  # the failed transaction rolled back its revision bump too
    deleted = cat.delete_where(coll.id, Item.uri == "/a.jpg")
    assert deleted == [1] and cat.count(coll.id) == 1
    with cat.write(coll.id) as (s, rev):  # after a delete the same content may come back
        cat.insert_items(s, coll.id, rev, [NewItem(uri="/a2.jpg", sha256="a" * 64, width=1, height=1, vector=blob)])
    changes = list(cat.changes_since(coll.id, 2))[0]
    assert changes[1].tolist() == [True, False]  # the tombstone and the new row
    assert cat.purge_deleted(coll.id, cat.revision(coll.id)[0]) == 1
    assert cat.revision(coll.id)[1] == 4
    cat.close()


def test_filters_compile_against_item_on_both_backends(db_url, tmp_path):
    from search.filters import compile_filter

    with Store(tmp_path / "data", db=db_url) as store:
        coll = store.create_collection("c", FakeBinding(dim=DIM))
        x = clustered(60, DIM, seed=1)
        ids = add_rows(coll, x, meta=lambda n: {"n": n, "kind": "even" if n % 2 == 0 else "odd",
                                                 **({"rare": True} if n % 10 == 0 else {})})
        where = compile_filter('meta.kind = "even" AND meta.n < 20', Item, store.catalog.dialect)
        assert sorted(store.catalog.select_ids(coll.id, where).tolist()) == ids[[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]].tolist()
        hits = coll.search(x[:3], k=5, where=compile_filter("meta.rare = true", Item, store.catalog.dialect))
        assert all(len(h) == 5 for h in hits)
        n = coll.delete(where=compile_filter('meta.kind = "odd"', Item, store.catalog.dialect))
        assert n == 30 and coll.count() == 30
        assert_index_matches_catalog(coll)


def test_store_on_postgres_two_processes_view(pg_url, tmp_path):  # noqa: F811
    with Store(tmp_path / "a", db=pg_url) as writer, Store(tmp_path / "b", db=pg_url) as reader:
        coll = writer.create_collection("shared", FakeBinding(dim=DIM))
        x = clustered(100, DIM, seed=2)
        ids = add_rows(coll, x)
        rc = reader.collection("shared")
        assert rc.search(x[7], k=1)[0][0].id == ids[7]
        assert coll.delete(ids=ids[:50].tolist()) == 50
        assert rc.index.ntotal == 50
        assert_index_matches_catalog(rc)
        writer.drop_collection("shared")
        with pytest.raises(NotFound):
            reader.collection("shared")


def _items(cat, coll_id, n, start=0):
    with cat.write(coll_id) as (s, rev):
        cat.insert_items(s, coll_id, rev, [
            NewItem(uri=f"/{coll_id}/{i}.jpg", sha256=f"{coll_id:02d}{i:062x}", width=1, height=1, meta={"i": i},
                    vector=np.full(DIM, i, "<f4").tobytes()) for i in range(start, start + n)])


def test_reads_by_id_stay_in_their_collection_and_skip_deleted(db_url):
    cat = Catalog(db_url)
    a = cat.create_collection("a", encoder_name="m", encoder_family="siglip", encoder_digest="d" * 32, dim=DIM)
    b = cat.create_collection("b", encoder_name="m", encoder_family="siglip", encoder_digest="d" * 32, dim=DIM)
    _items(cat, a.id, 5)
    _items(cat, b.id, 5)
    a_ids, b_ids = cat.select_ids(a.id).tolist(), cat.select_ids(b.id).tolist()
    cat.delete_where(a.id, None, ids=a_ids[:1] + b_ids[:1])  # an id of another collection is not touched
    assert cat.count(a.id) == 4 and cat.count(b.id) == 5
    rows = cat.items_by_id(a.id, a_ids + b_ids)
    assert sorted(rows) == a_ids[1:]
    assert rows[a_ids[2]].vector_array().tolist() == [2.0] * DIM
    light = cat.items_by_id(a.id, a_ids, with_vectors=False)
    assert sorted(light) == a_ids[1:] and all(r.vector is None for r in light.values())
    assert light[a_ids[3]].meta == {"i": 3} and light[a_ids[3]].uri == f"/{a.id}/3.jpg"
    with pytest.raises(RuntimeError, match="read without its vector"):
        light[a_ids[3]].vector_array()
    assert cat.select_ids(a.id, Item.width == 1, ids=a_ids + b_ids).tolist() == a_ids[1:]
    _items(cat, b.id, 1000, start=5)  # id lists longer than one statement's 900 bound values
    b_ids = cat.select_ids(b.id).tolist()
    assert len(cat.select_ids(b.id, ids=b_ids, limit=950)) == 950
    assert len(cat.delete_where(b.id, Item.width == 1, ids=b_ids[:1000])) == 1000 and cat.count(b.id) == 5
    cat.close()


def test_reads_by_id_use_the_primary_key_on_sqlite(tmp_path):
    """Without statistics SQLite would walk the whole collection through an index led by collection_id
    and test every row against the id list (O(collection) per search) once the list has ~10 ids."""
    from indexer.catalog import _LIVE_ITEMS_BY_ID

    cat = Catalog(database_url(tmp_path / "data"))
    coll = cat.create_collection("c", encoder_name="m", encoder_family="siglip", encoder_digest="d" * 32, dim=DIM)
    _items(cat, coll.id, 50)
    ids = list(range(1, 41))
    statements = [_LIVE_ITEMS_BY_ID.params(cid=coll.id, ids=ids),
                  select(Item.id).where(cat.live(coll.id, ids), Item.width == 1)]
    with cat.engine.connect() as conn:
        for stmt in statements:
            sql = stmt.compile(conn, compile_kwargs={"literal_binds": True, "render_postcompile": True})
            plan = " ".join(str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
            assert "PRIMARY KEY" in plan, plan
    cat.close()


def test_kept_read_connections_survive_a_postgres_restart(pg_url):  # noqa: F811
    """Request-path reads reuse kept connections; one the server dropped is replaced, not reported."""
    cat = Catalog(pg_url)
    coll = cat.create_collection("c", encoder_name="m", encoder_family="siglip", encoder_digest="d" * 32, dim=DIM)
    assert cat.collection_state("c")[1] == 0 and cat._reads._kept  # a connection is kept for the next read
    with cat.session() as s:  # what a server restart or an idle timeout does to them
        s.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    _items(cat, coll.id, 2)
    assert cat.collection_state("c")[1] == 1
    assert len(cat.items_by_id(coll.id, cat.select_ids(coll.id))) == 2
    cat.close()


def test_write_probes_find_live_uris_and_shas_only(db_url):
    """The bulk write path's probes (existing_shas / live_by_uri: `= ANY(array)` on PostgreSQL, IN on SQLite)
    answer the same on both backends: live items of this collection only, more values than one chunk, uris
    with characters an array literal would need quoted."""
    cat = Catalog(db_url)
    a, b = (cat.create_collection(n, encoder_name="m", encoder_family="siglip", encoder_digest="d", dim=DIM).id
            for n in ("a", "b"))
    odd = ['/x/"quoted", {braced}\\.jpg', "/x/NULL", "/x/é ü.jpg"]
    with cat.write(a) as (s, rev):
        cat.insert_items(s, a, rev, [NewItem(uri=u, sha256=f"{i:064x}", width=1, height=1, vector=bytes(4 * DIM))
                                     for i, u in enumerate(odd)])
    _items(cat, a, 1000, start=10)
    _items(cat, b, 5)
    cat.delete_where(a, Item.uri == "/x/NULL")
    shas = [f"{i:064x}" for i in range(3)] + [f"{a:02d}{i:062x}" for i in range(1010)] + [f"{b:02d}{0:062x}"]
    uris = odd + [f"/{a}/{i}.jpg" for i in range(1010)] + [f"/{b}/0.jpg"]
    with cat.session() as s:
        found_shas = cat.existing_shas(s, a, shas)
        found_uris = cat.live_by_uri(s, a, uris)
    assert sorted(found_shas) == sorted([f"{0:064x}", f"{2:064x}"] + [f"{a:02d}{i:062x}" for i in range(10, 1010)])
    assert sorted(found_uris) == sorted([odd[0], odd[2]] + [f"/{a}/{i}.jpg" for i in range(10, 1010)])
    assert found_uris[odd[0]] == (found_shas[f"{0:064x}"], f"{0:064x}")
    cat.close()
