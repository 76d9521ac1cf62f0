"""Hybrid search: the full-text index kept with the items (SQLite FTS5, PostgreSQL tsvector), keyword-only
queries, reciprocal rank fusion with the vector list, filters / deletes / updates reflected, hostile keyword
strings, and the upgrade of a schema-2 catalog. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import inspect

from indexer import text_index
from indexer.catalog import SCHEMA_VERSION, Catalog
from indexer.store import Store, UpsertRow
from indexer_helpers import FakeBinding
from mmsearch.errors import InvalidInput
from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from search.hybrid import RRF_K, fuse
from search.pipeline import Query, Searcher

DIM = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "catalog.db")
    return request.getfixturevalue("pg_url")


def unit(i: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i % DIM] = 1.0
    return v


def row(uri: str, vector, caption: str | None = None, meta: dict | None = None) -> UpsertRow:
    v = np.asarray(vector, np.float32)
    v = v / np.linalg.norm(v)
    return UpsertRow(uri=uri, sha256=hashlib.sha256(uri.encode() + v.tobytes()).hexdigest(), width=10, height=10,
                     vector=v, meta=meta, caption=caption)


ITEMS = [  # uri, caption, meta (title and tags are text fields; "note" is not)
    ("/photos/IMG_2041_red-car.jpg", "a car parked on a street", {"title": "Sunday drive", "year": 2020}),
    ("/photos/beach.png", "a red umbrella on the beach", {"tags": ["holiday", "Sea"], "year": 2021}),
    ("/photos/dog.jpg", "a dog running on grass", {"note": "umbrella", "year": 2022}),
    ("/photos/cat.jpg", "一辆红色汽车 and a cat", {"title": "Café au lait", "year": 2023}),
    ("/photos/plain.jpg", None, {"year": 2024}),
]


@pytest.fixture
def env(tmp_path, db_url):
    store = Store.open(tmp_path / "data", db=db_url)
    handle = store.create_collection("photos", FakeBinding(dim=DIM), text_fields=["title", "tags"])
    results = handle.upsert([row(uri, unit(i), caption, meta) for i, (uri, caption, meta) in enumerate(ITEMS)])
    ids = {uri: item_id for (uri, _, _), (item_id, problem) in zip(ITEMS, results)}
    assert len(set(ids.values())) == len(ITEMS)
    yield Searcher(store, models=None), store, handle, ids
    store.close()


def documents(handle) -> int:
    with handle.catalog.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM item_text").scalar()


def found(searcher, **kw) -> list[int]:
    return [h.id for h in searcher.search(Query(collection="photos", top_k=kw.pop("top_k", 10), **kw)).hits]


def test_words_and_file_names():
    assert text_index.file_name_words("/a/b/IMG_2041_red-car.jpg") == ["img", "2041", "red", "car"]
    assert text_index.file_name_words("https://x.org/p/Sunset.Beach.JPEG?size=2#top") == ["sunset", "beach"]
    assert text_index.file_name_words("sha256:" + "ab" * 32) == []
    assert text_index.words("Ünïcode CAFÉ ｆｕｌｌ") == ["ünïcode", "café", "full"]
    assert text_index.query_terms("红色汽车 red") == [["红", "色", "汽", "车"], ["red"]]


def test_keyword_only_finds_captions_file_names_and_text_fields(env):
    searcher, _, _, ids = env
    assert found(searcher, keywords="red car") == [ids["/photos/IMG_2041_red-car.jpg"]]  # file name + caption
    assert set(found(searcher, keywords="red")) == {ids["/photos/IMG_2041_red-car.jpg"], ids["/photos/beach.png"]}
    assert found(searcher, keywords="2041") == [ids["/photos/IMG_2041_red-car.jpg"]]
    assert found(searcher, keywords="SEA holiday") == [ids["/photos/beach.png"]]  # a list field, case folded
    assert found(searcher, keywords="sunday") == [ids["/photos/IMG_2041_red-car.jpg"]]  # title
    assert found(searcher, keywords="umbrella") == [ids["/photos/beach.png"]]  # "note" is not a text field
    assert found(searcher, keywords="café") == [ids["/photos/cat.jpg"]]
    assert found(searcher, keywords="红色汽车") == [ids["/photos/cat.jpg"]]  # a CJK run is a phrase
    assert found(searcher, keywords="汽红") == []
    assert found(searcher, keywords="red dog") == []  # words are ANDed
    result = searcher.search(Query(collection="photos", keywords="red", top_k=10))
    assert result.score_kind == "keyword"
    assert all(h.keyword_score == h.score and h.vector_score is None for h in result.hits)
    assert result.hits[0].score >= result.hits[1].score


def test_filter_delete_and_updates_are_reflected(env):
    searcher, _, handle, ids = env
    car, beach = ids["/photos/IMG_2041_red-car.jpg"], ids["/photos/beach.png"]
    assert found(searcher, keywords="red", filter="meta.year >= 2021") == [beach]
    hybrid = found(searcher, keywords="red", vector=unit(0).tolist(), filter="meta.year >= 2021")
    assert hybrid[0] == beach and set(hybrid) == set(found(searcher, vector=unit(0).tolist(), filter="meta.year >= 2021"))
    # an updated caption and metadata (Upsert of the same uri) replace the item's words in the same write
    handle.upsert([row("/photos/beach.png", unit(1), "a blue kite", {"tags": ["windy"], "year": 2021})])
    assert found(searcher, keywords="umbrella") == [] and found(searcher, keywords="holiday") == []
    assert found(searcher, keywords="blue kite windy") == [beach]
    # metadata given without a caption keeps the caption
    handle.upsert([row("/photos/beach.png", unit(1), None, {"title": "Kites"})])
    assert found(searcher, keywords="kite kites") == [beach] and found(searcher, keywords="windy") == []
    assert documents(handle) == len(ITEMS)  # one per live item: replaced, not added
    handle.delete(ids=[car])
    assert documents(handle) == len(ITEMS) - 1  # the delete took the document with it
    assert found(searcher, keywords="red") == [] and found(searcher, keywords="2041") == []
    assert car not in found(searcher, keywords="car", vector=unit(0).tolist(), top_k=10)


def test_changed_text_fields_rewrite_documents(env):
    searcher, _, handle, ids = env
    handle.set_text_fields(["note"])
    assert set(found(searcher, keywords="umbrella")) == {ids["/photos/beach.png"], ids["/photos/dog.jpg"]}
    assert found(searcher, keywords="sunday") == [] and found(searcher, keywords="2041") == [
        ids["/photos/IMG_2041_red-car.jpg"]]
    with pytest.raises(InvalidInput):
        handle.set_text_fields(["bad field!"])


def test_fusion_order_on_a_hand_made_example(env):
    searcher, _, handle, _ = env
    # the query is nearest to a, then b, c, d, e (vector list); the keyword "zebra" ranks e, then c
    q = np.array([1, 0, 0, 0, 0, 0, 0, 0], np.float32)
    made = {}
    for name, cos, caption in (("a", 0.99, "plain"), ("b", 0.9, "plain"), ("c", 0.8, "zebra"),
                               ("d", 0.7, "plain"), ("e", 0.6, "zebra zebra zebra zebra")):
        v = np.zeros(DIM, np.float32)
        v[0], v[7] = cos, np.sqrt(1 - cos * cos)
        made[name] = handle.upsert([row(f"/fuse/{name}.jpg", v, caption)])[0][0]
    filt = "uri >= '/fuse/' AND uri < '/fuse0'"
    vector_order = found(searcher, vector=q.tolist(), filter=filt, top_k=5)
    assert vector_order == [made[n] for n in "abcde"]
    keyword_order = found(searcher, keywords="zebra", filter=filt)
    assert keyword_order == [made["e"], made["c"]]  # bm25 / ts_rank: more occurrences first
    result = searcher.search(Query(collection="photos", vector=q.tolist(), keywords="zebra", filter=filt, top_k=5))
    # rrf: c = 1/63 + 1/62, e = 1/65 + 1/61, a = 1/61, b = 1/62, d = 1/64
    assert [h.id for h in result.hits] == [made[n] for n in "ceabd"]
    assert result.score_kind == "rrf"
    by_id = {h.id: h for h in result.hits}
    assert by_id[made["c"]].score == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 2))
    assert by_id[made["a"]].keyword_score is None and by_id[made["a"]].vector_score == pytest.approx(0.99, abs=1e-5)
    assert by_id[made["e"]].keyword_score is not None and by_id[made["e"]].vector_score == pytest.approx(0.6, abs=1e-5)
    # min_score cuts the vector list before fusion; keyword matches stay
    # (a = e = 1/61: the same best rank, so the lower id; b = c = 1/62 likewise)
    cut = found(searcher, vector=q.tolist(), keywords="zebra", filter=filt, min_score=0.85)
    assert cut == [made[n] for n in "aebc"]


def test_fuse_ties_and_rank_arithmetic():
    class H:
        def __init__(self, i, s):
            self.id, self.score = i, s

    fused = fuse([H(1, 0.9), H(2, 0.8)], [(2, 5.0), (3, 4.0)])
    assert [r.id for r in fused] == [2, 1, 3]  # 2 is in both; 1 and 3 tie at 1/61 vs 1/62 -> 1 first
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    tie = fuse([H(5, 0.5)], [(4, 1.0)])
    assert [r.id for r in tie] == [4, 5]  # equal rrf and best rank: the lower id


def test_paging_is_a_slice_of_one_fused_list(env):
    searcher, _, handle, _ = env
    rng = np.random.default_rng(0)
    handle.upsert([row(f"/many/{i}.jpg", rng.standard_normal(DIM), "zebra" if i % 3 else "horse")
                   for i in range(60)])
    q = rng.standard_normal(DIM).tolist()
    whole = searcher.search(Query(collection="photos", vector=q, keywords="zebra", top_k=7, offset=0))
    pages, offset = [], 0
    while True:
        r = searcher.search(Query(collection="photos", vector=q, keywords="zebra", top_k=7, offset=offset))
        pages += [h.id for h in r.hits]
        if not r.next_offset:
            break
        offset = r.next_offset
    deep = searcher.search(Query(collection="photos", vector=q, keywords="zebra", top_k=100))
    assert pages == [h.id for h in deep.hits][:len(pages)] and len(pages) == len(deep.hits)
    assert [h.id for h in whole.hits] == pages[:7]


HOSTILE = ['"', '""', "NEAR(", "NEAR(red car, 2)", "*", "red*", 'red" OR "dog', "red OR dog", "NOT red", "-red",
           "^red", "(", ")", "a:b", "caption:red", "{red}", "red AND", "\\", "%", "_", "'", "''",
           "'; DROP TABLE items; --", "red & dog", "red | dog", "!red", "red <-> car", "red:*", "\x00", "💥",
           "​", "a" * 1000]


@pytest.mark.parametrize("keywords", HOSTILE)
def test_hostile_keywords_are_words_or_nothing(keywords):
    terms = text_index.query_terms(keywords)
    for term in terms:
        for word in term:
            assert word and not set(word) & set("\"'*():^{}-&|!<>\\%;_ \x00\u200b"), word


def test_hostile_keywords_run_on_the_database(env):
    searcher, store, _, ids = env
    for keywords in HOSTILE:
        expected = None
        words = [w for t in text_index.query_terms(keywords) for w in t]
        if words == ["red", "or", "dog"] or words == ["not", "red"]:
            expected = []
        got = found(searcher, keywords=keywords)
        hybrid = found(searcher, keywords=keywords, vector=unit(2).tolist())
        assert len(hybrid) >= 1
        if expected is not None:
            assert got == expected, keywords
        if words == ["red"]:
            assert set(got) == {ids["/photos/IMG_2041_red-car.jpg"], ids["/photos/beach.png"]}, keywords
    assert store.catalog.count(store.collection("photos").id) == len(ITEMS)  # nothing dropped or injected


def test_bad_keyword_queries(env):
    searcher, *_ = env
    with pytest.raises(InvalidInput, match="longer than"):
        searcher.search(Query(collection="photos", keywords="a" * 1001))
    with pytest.raises(InvalidInput, match="more than"):
        searcher.search(Query(collection="photos", keywords=" ".join(f"w{i}" for i in range(40))))
    with pytest.raises(InvalidInput, match="min_score"):
        searcher.search(Query(collection="photos", keywords="red", min_score=0.5))
    with pytest.raises(InvalidInput, match="empty query"):
        searcher.search(Query(collection="photos", keywords="   "))
    assert found(searcher, keywords="*") == []  # no words: nothing matches, no error


def test_upgrade_of_a_schema_2_catalog(tmp_path, db_url):
    store = Store.open(tmp_path / "data", db=db_url)
    handle = store.create_collection("photos", FakeBinding(dim=DIM))
    handle.upsert([row(uri, unit(i), caption, meta) for i, (uri, caption, meta) in enumerate(ITEMS)])
    gone = handle.upsert([row("/photos/gone_zebra.jpg", unit(3), "zebra")])[0][0]
    handle.delete(ids=[gone])
    store.close()
    # make it what schema version 2 wrote: no text index, no text_fields
    cat = Catalog(db_url)
    with cat.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE item_text")
        conn.exec_driver_sql("ALTER TABLE collections DROP COLUMN text_fields")
        conn.exec_driver_sql("UPDATE mmsearch_meta SET value = '2' WHERE key = 'schema_version'")
    cat.close()
    with pytest.raises(Exception, match="mmsearch migrate"):
        Catalog(db_url, upgrade=False)
    cat = Catalog(db_url)
    assert cat.upgraded_from == 2 and cat.schema_version() == SCHEMA_VERSION
    assert "text_fields" in {c["name"] for c in inspect(cat.engine).get_columns("collections")}
    coll = cat.get_collection("photos")
    assert coll.text_fields == []
    assert [i for i, _ in cat.keyword_search(coll.id, "red car")] == [int(min(cat.select_ids(coll.id, None)))]
    assert cat.keyword_search(coll.id, "zebra") == []  # the deleted item got no document
    assert cat.keyword_search(coll.id, "sunday") == []  # no text fields named yet
    cat.close()
    store = Store.open(tmp_path / "data", db=db_url)
    store.collection("photos").set_text_fields(["title"])
    assert len(store.catalog.keyword_search(coll.id, "sunday")) == 1
    store.close()


def test_keywords_on_grpc_http_and_the_cli(tmp_path, tiny_siglip_dir, capsys):
    import json

    import requests

    from search.cli import main
    from search.client import SearchClient
    from search.config import ServerConfig
    from search.server import start
    from search_helpers import png_bytes

    config = ServerConfig(address="127.0.0.1:0", http="127.0.0.1:0", data_dir=str(tmp_path / "data"),
                          health_grace_s=0, batch_wait_ms=1, allow_models=[str(tiny_siglip_dir)])
    srv = start(config)
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", retries=0) as client:
            info = client.create_collection("photos", model=str(tiny_siglip_dir), text_fields=["title"])
            assert list(info.text_fields) == ["title"]
            items = [{"image": png_bytes(i), "uri": f"IMG_{i}_{word}.png", "caption": caption,
                      "metadata": {"title": title}}
                     for i, (word, caption, title) in enumerate([("red-car", "a car", "sunday"),
                                                                 ("beach", "a red kite", "holiday"),
                                                                 ("dog", "a dog", "sunday walk")])]
            ids = [s.id for s in client.upsert("photos", items).statuses]
            r = client.search("photos", keywords="red", top_k=5)
            assert r.score_kind == "keyword" and {h.id for h in r.hits} == {ids[0], ids[1]}
            assert all(h.HasField("keyword_score") and not h.HasField("vector_score") for h in r.hits)
            both = client.search("photos", text="a photo", keywords="sunday", top_k=5, filter="meta.title != 'x'")
            assert both.score_kind == "rrf" and len(both.hits) == 3 and both.timing.keyword_ms > 0
            assert {h.id for h in both.hits[:2]} == {ids[0], ids[2]}  # in both lists: ahead of the vector-only one
            http = requests.post(f"http://127.0.0.1:{srv.http_port}/api/v1/collections/photos/search",
                                 json={"text": "a photo", "keywords": "sunday", "top_k": 5,
                                       "filter": "meta.title != 'x'"}, timeout=60).json()
            assert http["score_kind"] == "rrf" and [h["id"] for h in http["hits"]] == [h.id for h in both.hits]
            assert http["hits"][0]["keyword_score"] == pytest.approx(both.hits[0].keyword_score)
            bad = requests.post(f"http://127.0.0.1:{srv.http_port}/api/v1/collections/photos/search",
                                json={"keywords": "x" * 2000}, timeout=60)
            assert bad.status_code == 400 and "longer than" in bad.json()["error"]["message"]
        capsys.readouterr()
        assert main(["query", "--keywords", 'walk" OR *', "--collection", "photos", "--server",
                     f"127.0.0.1:{srv.port}", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["score_kind"] == "keyword" and [h["id"] for h in out["hits"]] == []  # "or" is a word too
        assert main(["query", "--keywords", "walk", "--collection", "photos", "--server",
                     f"127.0.0.1:{srv.port}", "--json"]) == 0
        assert [h["id"] for h in json.loads(capsys.readouterr().out)["hits"]] == [ids[2]]
    finally:
        srv.stop(1)
    assert main(["query", "--keywords", "IMG 1", "--collection", "photos", "--data-dir", str(tmp_path / "data")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("rank\tid\tkeyword_score") and [line.split("\t")[1] for line in table[1:]] == [
        str(ids[1])]


def test_bulk_job_writes_documents_with_the_named_fields(tmp_path, tiny_siglip_dir, capsys):
    import json

    from images import random_image
    from search.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = []
    for i, (name, tags) in enumerate([("Sunset_Pier.png", ["beach", "evening"]), ("snow-day.png", ["winter"])]):
        random_image(24, 20, seed=i).save(folder / name)
        lines.append(json.dumps({"uri": str(folder / name), "tags": tags, "note": "beach"}))
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["index", str(tmp_path / "list.jsonl"), "--collection", "c", "--model", str(tiny_siglip_dir),
                 "--workers", "0", "--text-fields", "tags", *data]) == 0
    store = Store.open(tmp_path / "data")
    try:
        coll = store.collection("c")
        assert coll.row.text_fields == ["tags"]
        by_uri = {r.uri: r.id for r in coll.get(store.catalog.select_ids(coll.id)).values()}
        pier = by_uri[str(folder / "Sunset_Pier.png")]
        assert [i for i, _ in store.catalog.keyword_search(coll.id, "beach")] == [pier]  # tags, not note
        assert [i for i, _ in store.catalog.keyword_search(coll.id, "sunset pier evening")] == [pier]
        assert [i for i, _ in store.catalog.keyword_search(coll.id, "snow winter")] == [by_uri[str(folder / "snow-day.png")]]
    finally:
        store.close()
    # naming other fields on a later run rewrites the documents of what is already there
    assert main(["index", str(tmp_path / "list.jsonl"), "--collection", "c", "--workers", "0", "--text-fields",
                 "note", *data]) == 0
    capsys.readouterr()
    assert main(["query", "--keywords", "beach", "--collection", "c", "--json", *data]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 2


def test_collections_keep_their_own_matches(env):
    """Another collection's better-ranked matches never crowd a collection's own out (SQLite ranks the one
    text index first, then checks membership, going deeper, then joining)."""
    searcher, store, handle, _ = env
    other = store.create_collection("other", FakeBinding(dim=DIM), text_fields=[])
    other.upsert([row(f"/other/{i}.jpg", unit(i), "zebra zebra zebra") for i in range(1100)])
    mine = handle.upsert([row("/photos/zebra-crossing.jpg", unit(3), "a long caption about a street and a zebra")])[0][0]
    assert [i for i, _ in store.catalog.keyword_search(handle.id, "zebra", limit=1)] == [mine]
    assert [i for i, _ in store.catalog.keyword_search(handle.id, "zebra", limit=100)] == [mine]
    assert found(searcher, keywords="zebra") == [mine]
    assert len(store.catalog.keyword_search(other.id, "zebra", limit=2000)) == 1100
    store.drop_collection("other")
    assert documents(handle) == len(ITEMS) + 1  # dropping a collection drops its documents


def test_words_in_half_the_documents_filter_but_do_not_rank(tmp_path):
    """SQLite: a word in half or more of all documents has FTS5's floor idf (1e-6), so its bm25 share is
    nil; keyword_search leaves it out of the ranking (sparing its doclist) and the order and scores are
    those of bm25 over every word, within 1e-5."""
    store = Store.open(tmp_path / "data")
    handle = store.create_collection("photos", FakeBinding(dim=DIM))
    captions = [("photo of a zebra " * (1 + i % 3) + "long " * (i % 5)) if i % 8 == 0 else f"photo number {i}"
                for i in range(48)]
    handle.upsert([row(f"/p/IMG_{i:04d}.jpg", unit(i), c) for i, c in enumerate(captions)])
    cat = store.catalog

    def full_bm25(query: str):
        with cat.engine.connect() as conn:
            return [(int(i), s) for i, s in conn.exec_driver_sql(
                "SELECT rowid, -bm25(item_text) AS s FROM item_text WHERE item_text MATCH ? ORDER BY s DESC, rowid",
                (query,)).all()]

    for keywords in ("photo zebra", "img zebra long", "zebra"):
        got = cat.keyword_search(handle.id, keywords)
        want = full_bm25(text_index.fts5_query(text_index.query_terms(keywords)))
        assert [i for i, _ in got] == [i for i, _ in want] and len(got) >= 2, keywords
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
    assert cat._ranking(text_index.query_terms("img zebra"))[0] == "split"
    everywhere = cat.keyword_search(handle.id, "img photo")  # every word everywhere: the order is by id
    assert [i for i, _ in everywhere] == sorted(i for i, _ in full_bm25('"img" "photo"'))
    assert all(abs(s) < 1e-5 for _, s in full_bm25('"img" "photo"'))
    from indexer.catalog import Item
    from search.filters import compile_filter

    every_row = compile_filter("width >= 1", Item, "sqlite")  # the filtered (joined) statements rank alike
    assert cat.keyword_search(handle.id, "img photo", every_row, limit=3) == everywhere[:3]
    assert cat.keyword_search(handle.id, "img zebra long", every_row) == cat.keyword_search(handle.id, "img zebra long")
    store.close()
