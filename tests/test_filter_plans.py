"""Filters on metadata keys and built-in columns are answered from indexes, on SQLite and PostgreSQL: the
plans (EXPLAIN) of the statements the catalog runs, over a collection with statistics (Catalog.analyze)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from indexer.catalog import Catalog, Item, NewItem, database_url
from postgres import postgres_server  # noqa: F401  (fixture)
from search.filters import compile_filter

N = 5000

# filter -> what the SQLite plan of a scan for it must start from (all select well under 1% of the items)
SQLITE_SCANS = {
    'meta.tag = "t7"': "SEARCH mj1 USING PRIMARY KEY (key_id=? AND value=?)",
    'meta.tag IN ("t1", "t2", "t3")': "SEARCH mj1 USING PRIMARY KEY (key_id=? AND value=?)",
    "meta.score >= 0.999": "SEARCH mj1 USING PRIMARY KEY (key_id=? AND value>?)",
    "meta.score > 0.1 AND meta.score < 0.102": "SEARCH mj",
    'meta.exif.iso = 3 AND meta.tag = "t8"': "SEARCH mj",
    'meta.ok = true AND meta.tag = "t9"': "SEARCH mj",
    "width >= 1995": "USING INDEX ix_items_width (collection_id=? AND width>?)",
    "height < 103": "USING INDEX ix_items_height (collection_id=? AND height<?)",
    "created >= '2099-01-01'": "USING INDEX ix_items_created (collection_id=? AND created>?)",
    "id < 20": "USING INTEGER PRIMARY KEY (rowid<?)",
    'uri = "/17.jpg"': "USING INDEX ix_items_uri (collection_id=? AND uri=?)",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def catalog(request, tmp_path_factory):
    if request.param == "sqlite":
        url = database_url(tmp_path_factory.mktemp("plans"))
    else:
        url = request.getfixturevalue("postgres_server").new_database()
    cat = Catalog(url)
    coll = cat.create_collection("p", encoder_name="m", encoder_family="siglip", encoder_digest="d", dim=4)
    other = cat.create_collection("q", encoder_name="m", encoder_family="siglip", encoder_digest="d", dim=4)
    rng = np.random.default_rng(0)
    for cid in (coll.id, other.id):  # a second collection with the same keys
        with cat.write(cid) as (s, rev):
            cat.insert_items(s, cid, rev, [NewItem(
                uri=f"/{i}.jpg", sha256=f"{i:064x}", width=int(rng.integers(100, 2000)),
                height=int(rng.integers(100, 2000)), vector=np.zeros(4, "<f4").tobytes(),
                meta={"tag": f"t{i % 1000}", "lic": f"l{i % 10}", "score": float(rng.random()), "ok": i % 2 == 0,
                      "exif": {"iso": i % 500}}) for i in range(N)])
    cat.analyze()
    yield cat, coll.id
    cat.close()


def _plan(cat, stmt) -> str:
    with cat.engine.connect() as conn:
        if cat.dialect == "sqlite":
            sql = stmt.compile(conn, compile_kwargs={"literal_binds": True, "render_postcompile": True})
            return " | ".join(str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        compiled = stmt.compile(dialect=cat.engine.dialect, compile_kwargs={"render_postcompile": True})
        return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params))


@pytest.mark.parametrize("flt", sorted(SQLITE_SCANS))
def test_scans_start_from_an_index(catalog, flt):
    cat, cid = catalog
    where = compile_filter(flt, Item, cat.dialect)
    plan = _plan(cat, cat.ids_statement(cid, where, limit=2001))
    if cat.dialect == "sqlite":
        assert SQLITE_SCANS[flt] in plan, plan
        assert "SCAN items" not in plan and "SCAN mj" not in plan, plan
    else:  # PostgreSQL may join the index range to a scan of items, by its costs; the range is an index scan
        assert "Seq Scan on mj" not in plan, plan
        wanted = ("meta_num_pkey", "meta_str_pkey") if flt.startswith("meta") else ("ix_items_", "items_pkey")
        assert any(name in plan for name in wanted), plan
        if not flt.startswith("meta.score"):  # a range of unknown width on a key PostgreSQL cannot see
            assert "Seq Scan on items" not in plan, plan
    assert len(cat.select_ids(cid, where)) < N // 50  # and they are as selective as they look


@pytest.mark.parametrize("flt", ['meta.tag = "t7"', "meta.score >= 0.5", 'meta.lic != "l1" AND width > 300',
                                 'NOT meta.ok = true OR meta.exif.iso IN (1, 2)'])
def test_checking_candidates_looks_each_one_up(catalog, flt):
    """The post-filter path checks a list of candidate ids: each by primary key, its metadata by the
    (item_id, key_id) index or the primary key, never a scan, whatever the filter's selectivity."""
    cat, cid = catalog
    candidates = cat.select_ids(cid)[::97].tolist()
    plan = _plan(cat, cat.ids_statement(cid, compile_filter(flt, Item, cat.dialect), ids=candidates))
    if cat.dialect == "sqlite":
        assert plan.startswith("SEARCH items USING INTEGER PRIMARY KEY (rowid=?)"), plan
        assert "SCAN" not in plan, plan
    else:
        assert "Seq Scan on items" not in plan and "Seq Scan on meta_num" not in plan, plan
        assert "Seq Scan on meta_str" not in plan, plan
        assert "items_pkey" in plan, plan


@pytest.mark.parametrize("flt", ['meta.tag = "t7"', 'meta.tag IN ("t1", "t2")', "meta.score >= 0.999",
                                 'meta.exif.iso = 3 AND meta.tag = "t8"', "width >= 1995", "height < 103"])
def test_search_scans_read_the_filter_index_alone(catalog, flt):
    """The search path's id scan (tombstones allowed: the index drops them) reads no item rows: metadata
    terms from the metadata index (it holds live items only), built-in columns from their covering index."""
    cat, cid = catalog
    where = compile_filter(flt, Item, cat.dialect)
    plan = _plan(cat, cat.ids_statement(cid, where, tombstones=True))
    if cat.dialect == "sqlite":
        if flt.startswith("meta"):
            assert "items" not in plan and "SCAN" not in plan, plan
        else:
            assert "USING COVERING INDEX ix_items_" in plan and "SCAN" not in plan, plan
    else:  # (meta_keys, a few rows, may be read whole)
        assert "Seq Scan on items" not in plan and "Seq Scan on mj" not in plan, plan
        if flt.startswith("meta"):
            assert "items" not in plan, plan
    live = set(cat.select_ids(cid, where).tolist())
    assert set(cat.select_ids(cid, where, tombstones=True).tolist()) == live  # no deletes here: the same ids
