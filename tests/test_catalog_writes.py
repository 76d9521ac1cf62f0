"""The bulk write path (CollectionHandle.write_rows -> Catalog.insert_items / update_items) on SQLite and on a
real PostgreSQL server: what it stores round-trips exactly (binary COPY on PostgreSQL), the uri / sha256
rules hold, a bad vector refuses the whole batch, PostgreSQL keeps vectors inline and uncompressed, and
concurrent writers never leave a catching-up reader behind."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from indexer_helpers import FakeBinding, assert_index_matches_catalog, clustered
from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from sqlalchemy import text
from test_catalog import db_url  # noqa: F401  (fixture: each test on SQLite and on PostgreSQL)

from indexer.catalog import database_url
from indexer.store import Store, UpsertRow
from mmsearch.errors import InvalidInput

DIM = 16


def _row(uri: str, vec: np.ndarray, sha: str, **kw) -> UpsertRow:
    return UpsertRow(uri=uri, sha256=sha, width=kw.pop("width", 3), height=kw.pop("height", 4), vector=vec, **kw)


def test_written_rows_read_back_exactly(db_url, tmp_path):  # noqa: F811
    vecs = clustered(5, DIM, seed=1)
    meta = {"camera": "nikon", "iso": 200, "exposure": 0.125, "flash": False, "exif": {"lens": "50mm"},
            "tags": ["a", "b"], "big": 2**70, "text": "é ü 中文 \"quoted\" \\ tab\t"}
    with Store(tmp_path / "d", db=db_url) as store:
        coll = store.create_collection("c", FakeBinding(dim=DIM), "flat")
        out = coll.upsert([_row(f"/img/{i}.jpg", vecs[i], f"{i:064x}", meta=meta if i == 0 else None,
                                caption="a red car" if i == 1 else None) for i in range(5)])
        ids = [i for i, why in out]
        assert all(why is None for _, why in out)
        got = coll.get(ids)
        for i, item_id in enumerate(ids):
            np.testing.assert_array_equal(got[item_id].vector_array(), vecs[i])
            assert (got[item_id].width, got[item_id].height) == (3, 4)
        assert got[ids[0]].meta == meta and got[ids[1]].meta == {} and got[ids[1]].caption == "a red car"
        assert got[ids[0]].caption is None and not got[ids[0]].deleted
        assert set(store.catalog.select_ids(coll.id, _meta_filter(store, 'meta.camera = "nikon"'))) == {ids[0]}
        assert set(store.catalog.select_ids(coll.id, _meta_filter(store, "meta.exif.lens = \"50mm\""))) == {ids[0]}
        assert [i for i, _ in store.catalog.keyword_search(coll.id, "red car")] == [ids[1]]
        assert_index_matches_catalog(coll)


def _meta_filter(store, expr):
    from indexer.catalog import Item
    from search.filters import compile_filter

    return compile_filter(expr, Item, store.catalog.dialect)


def test_uri_and_content_rules(db_url, tmp_path):  # noqa: F811
    """A content already live under another uri is refused (within a batch and across batches); a live uri
    is replaced in place (same id, new vector); a deleted item's content may come back under a new uri."""
    v = clustered(6, DIM, seed=2)
    with Store(tmp_path / "d", db=db_url) as store:
        coll = store.create_collection("c", FakeBinding(dim=DIM), "flat")
        (a, why_a), (b, why_b), (dup, why_dup) = coll.upsert([
            _row("/a.jpg", v[0], "a" * 64, meta={"k": 1}), _row("/b.jpg", v[1], "b" * 64),
            _row("/copy-of-a.jpg", v[0], "a" * 64)])
        assert why_a is None and why_b is None and dup == a and "already item" in why_dup
        (held, why), = coll.upsert([_row("/another-copy.jpg", v[0], "a" * 64)])
        assert held == a and "already item" in why
        (same, why), = coll.upsert([_row("/a.jpg", v[2], "c" * 64)])  # replace by uri: same id, new content
        assert same == a and why is None
        got = coll.get([a])[a]
        assert got.sha256 == "c" * 64 and got.meta == {"k": 1}  # meta not given: kept
        np.testing.assert_array_equal(got.vector_array(), v[2])
        (moved, why), = coll.upsert([_row("/b.jpg", v[2], "c" * 64)])  # content held by /a.jpg: refused
        assert moved == a and "already item" in why
        assert coll.count() == 2
        assert coll.delete(uris=["/b.jpg"]) == 1
        (back, why), = coll.upsert([_row("/b-again.jpg", v[1], "b" * 64)])
        assert why is None and back not in (a, b)
        with store.catalog.engine.connect() as conn:  # one live row per content and per uri
            rows = conn.execute(text("SELECT uri, sha256 FROM items WHERE deleted = :f"), {"f": False}).all()
        assert sorted(rows) == [("/a.jpg", "c" * 64), ("/b-again.jpg", "b" * 64)]
        assert_index_matches_catalog(coll)


def test_a_bad_vector_refuses_the_whole_batch(db_url, tmp_path):  # noqa: F811
    v = clustered(3, DIM, seed=3)
    bad = v[1].copy()
    bad[4] = np.nan
    with Store(tmp_path / "d", db=db_url) as store:
        coll = store.create_collection("c", FakeBinding(dim=DIM), "flat")
        for wrong in (bad, v[1][:-1], np.zeros((2, DIM), np.float32)):
            with pytest.raises(InvalidInput, match=r"/1\.jpg: vector must be 16 finite floats"):
                coll.upsert([_row(f"/{i}.jpg", wrong if i == 1 else v[i], f"{i:064x}") for i in range(3)])
        assert coll.count() == 0 and store.catalog.revision(coll.id)[0] == 0


def test_postgres_keeps_vectors_inline_and_uncompressed(pg_url, tmp_path):  # noqa: F811
    """item_vectors is set to EXTERNAL storage with an 8160-byte toast target (also when a catalog made
    without it is opened), so a 768-d vector is stored in its row, never compressed or moved to TOAST."""
    with Store(tmp_path / "d", db=pg_url) as store:
        engine = store.catalog.engine
        with engine.begin() as conn:  # as a catalog made before the setting: PostgreSQL's defaults
            conn.execute(text("ALTER TABLE item_vectors ALTER COLUMN vector SET STORAGE EXTENDED"))
            conn.execute(text("ALTER TABLE item_vectors RESET (toast_tuple_target)"))
    with Store(tmp_path / "d", db=pg_url) as store:
        coll = store.create_collection("c", FakeBinding(dim=768), "flat")
        coll.upsert([_row(f"/{i}.jpg", v, f"{i:064x}") for i, v in enumerate(clustered(40, 768, seed=4))])
        with store.catalog.engine.connect() as conn:
            storage, options = conn.execute(text(
                "SELECT a.attstorage, c.reloptions FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "WHERE a.attrelid = 'item_vectors'::regclass AND a.attname = 'vector'")).one()
            toasted = conn.execute(text(
                "SELECT count(*) FROM item_vectors WHERE pg_column_size(vector) < octet_length(vector)")).scalar()
            toast_pages = conn.execute(text(
                "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'item_vectors'")).scalar()
        assert storage == "e" and "toast_tuple_target=8160" in options
        assert toasted == 0 and toast_pages == 0
        assert_index_matches_catalog(coll)


def test_concurrent_writers_and_a_catching_up_reader(db_url, tmp_path):  # noqa: F811
    """Writers committing at once (each with its own Store, as separate processes would) and a reader
    catching its index up from the catalog by revision the whole time: when they are done, the reader's
    index holds exactly the catalog's live items, and every commit got its own revision."""
    writers, batches, per = 4, 12, 5
    data = clustered(writers * batches * per, DIM, seed=5)
    with Store(tmp_path / "setup", db=db_url) as store:
        store.create_collection("c", FakeBinding(dim=DIM), "flat")
    errors: list[BaseException] = []
    done = threading.Event()

    def write(w: int) -> None:
        try:
            with Store(tmp_path / f"w{w}", db=db_url) as store:
                coll = store.collection("c")
                for b in range(batches):
                    at = (w * batches + b) * per
                    rows = [_row(f"/w{w}/{at + i}.jpg", data[at + i], f"{at + i:064x}") for i in range(per)]
                    if b % 3 == 2:  # replace one row written before (a write to an existing item)
                        rows[0] = _row(f"/w{w}/{at - per}.jpg", data[at], f"{at:064x}")
                    coll.upsert(rows)
        except BaseException as exc:  # noqa: BLE001  (reported by the test below)
            errors.append(exc)

    with Store(tmp_path / "reader", db=db_url) as reader:
        handle = reader.collection("c")
        handle.refresh()
        seen = []

        def read() -> None:
            try:
                while not done.is_set():
                    seen.append(handle.refresh().watermark)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        follower = threading.Thread(target=read)
        follower.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        done.set()
        follower.join(timeout=60)
        assert not errors, errors
        assert seen == sorted(seen)  # the reader's watermark only moves forward
        rev, _purged = reader.catalog.revision(handle.id)
        assert rev == writers * batches  # one revision per commit, none lost or shared
        assert handle.count() == writers * batches * per - writers * (batches // 3)
        assert_index_matches_catalog(handle)


def test_sqlite_bulk_writes_keep_their_dirty_pages(tmp_path):
    """SQLite connections may hold up to 65,535 dirty pages before spilling them mid-transaction (each page
    of a bulk write goes to the WAL once; spilling stays on, so memory stays bounded), while their cache of
    read pages stays 64 MiB."""
    from indexer.catalog import Catalog

    cat = Catalog(database_url(tmp_path / "data"))
    with cat.engine.connect() as conn:
        assert conn.execute(text("PRAGMA cache_spill")).scalar() == 65535  # 0 would be: never spill
        assert conn.execute(text("PRAGMA cache_size")).scalar() == -65536
    cat.close()


def test_postgres_catalog_opens_for_a_role_that_cannot_alter_it(pg_url, tmp_path, caplog):  # noqa: F811
    """Setting item_vectors' storage needs the table's owner; a role with only read and write rights still
    opens a catalog made without the setting (a warning), and writes through it."""
    from sqlalchemy.engine import make_url

    with Store(tmp_path / "d", db=pg_url) as store:
        with store.catalog.engine.begin() as conn:
            conn.execute(text("ALTER TABLE item_vectors ALTER COLUMN vector SET STORAGE EXTENDED"))
            conn.execute(text("DROP ROLE IF EXISTS writer_only"))
            conn.execute(text("CREATE ROLE writer_only LOGIN"))
            conn.execute(text("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO writer_only"))
            conn.execute(text("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO writer_only"))
    as_writer = make_url(pg_url).set(username="writer_only").render_as_string(hide_password=False)
    with caplog.at_level("WARNING", logger="mmsearch.indexer"), Store(tmp_path / "w", db=as_writer) as store:
        coll = store.create_collection("c", FakeBinding(dim=DIM), "flat")
        (item, why), = coll.upsert([_row("/a.jpg", clustered(1, DIM, seed=6)[0], "a" * 64)])
        assert why is None and coll.count() == 1
    assert "could not set item_vectors' storage" in caplog.text
