"""search.pipeline: two-stage retrieval against a real store, tiny SigLIP and tiny BLIP checkpoints."""

from __future__ import annotations

import gc
import json
import threading
import time

import numpy as np
import pytest

import encoders
from mmsearch.errors import Conflict, DeadlineExceeded, InvalidInput, NotFound
from indexer.store import Store
from search.filters import FilterError
from search.models import Models
from search.pipeline import Query, Searcher
from search_helpers import COLORS, brute_force, item_meta, png_bytes, populate


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_siglip_dir):
    root = tmp_path_factory.mktemp("pipeline")
    store = Store.open(root / "data")
    models = Models(batching=False)
    enc = models.dual(str(tiny_siglip_dir))
    ids = populate(store, "photos", enc, root / "images")
    searcher = Searcher(store, models)
    yield searcher, store, enc, ids
    models.close()
    store.close()


def hits_of(result):
    return [(h.id, pytest.approx(h.score, abs=1e-5)) for h in result.hits]


def test_text_search_is_exact_top_k(env):
    searcher, store, enc, _ = env
    result = searcher.search(Query(collection="photos", text="a photo of a cat", top_k=5))
    expected = brute_force(store.collection("photos"), enc.encode_texts(["a photo of a cat"])[0], 5)
    assert hits_of(result) == expected
    assert result.filter_strategy == "none" and result.candidates == 5
    assert set(result.timing) >= {"encode_ms", "ann_ms", "fetch_ms", "total_ms"}
    assert all(h.rerank_score is None and h.metadata is None and h.vector is None for h in result.hits)


def test_includes(env):
    searcher, store, _, ids = env
    result = searcher.search(Query(collection="photos", text="x", top_k=3, include_metadata=True,
                                   include_vector=True, include_caption=True))
    rows = store.collection("photos").get([h.id for h in result.hits])
    for hit in result.hits:
        seed = {v: k for k, v in ids.items()}[hit.id]
        assert hit.metadata == item_meta(seed)
        assert hit.caption == ""
        np.testing.assert_allclose(hit.vector, rows[hit.id].vector_array())
        assert hit.uri.endswith(f"img{seed:03d}.png") and hit.width == 32 + seed


def test_image_vector_and_item_queries(env):
    searcher, _, enc, ids = env
    by_image = searcher.search(Query(collection="photos", image=png_bytes(7, 39, 32), top_k=4))
    assert by_image.hits[0].id == ids[7] and by_image.hits[0].score == pytest.approx(1.0, abs=1e-5)
    vector = np.arange(enc.dim, dtype=np.float32) - 3.5
    by_vector = searcher.search(Query(collection="photos", vector=vector * 7, top_k=2))  # any scale
    assert hits_of(by_vector) == brute_force(env[1].collection("photos"), vector, 2)
    like = searcher.search(Query(collection="photos", item_id=ids[7], top_k=3))
    assert [h.id for h in like.hits] == [h.id for h in by_image.hits[1:4]]  # the item itself is left out


@pytest.mark.parametrize("flt, pred", [
    ('meta.color = "red"', lambda m: m["color"] == "red"),
    ("meta.even = true AND meta.i >= 10", lambda m: m["even"] and m["i"] >= 10),
    ("NOT meta.color IN ('red', 'green')", lambda m: m["color"] not in ("red", "green")),
])
@pytest.mark.parametrize("selector_max", [10_000, 2])
def test_filtered_search_is_full_and_exact(env, flt, pred, selector_max):
    _, store, enc, ids = env
    searcher = Searcher(store, env[0].models, selector_max_ids=selector_max)
    allowed = [ids[i] for i in ids if pred(item_meta(i))]
    result = searcher.search(Query(collection="photos", text="a green triangle", top_k=5, filter=flt))
    assert result.filter_strategy == ("id_selector" if len(allowed) <= selector_max else "post_filter")
    expected = brute_force(store.collection("photos"), enc.encode_texts(["a green triangle"])[0], 5, allowed)
    assert len(result.hits) == min(5, len(allowed))
    assert hits_of(result) == expected


def test_post_filter_fetches_deeper_until_top_k_is_full(env):
    _, store, enc, ids = env
    searcher = Searcher(store, env[0].models, selector_max_ids=1)
    q = enc.encode_texts(["two blue squares"])[0]
    # the items farthest from the query: a post-filter over the first candidates would come back short
    far = [i for i, _ in brute_force(store.collection("photos"), q, len(ids))][-3:]
    flt = "id IN (%s)" % ", ".join(map(str, far))
    result = searcher.search(Query(collection="photos", text="two blue squares", top_k=3, filter=flt))
    assert result.filter_strategy == "post_filter"
    assert sorted(h.id for h in result.hits) == sorted(far)


def test_query_errors(env):
    searcher, _, enc, ids = env
    cases = [
        (Query(collection="photos"), InvalidInput, "empty query"),
        (Query(collection="photos", text="  "), InvalidInput, "text is empty"),
        (Query(collection="photos", text="x", top_k=0), InvalidInput, "top_k must be between 1 and 10000"),
        (Query(collection="photos", text="x", top_k=10_001), InvalidInput, "top_k"),
        (Query(collection="photos", vector=[1.0] * (enc.dim + 1)), InvalidInput, f"has dim {enc.dim}"),
        (Query(collection="photos", vector=[0.0] * enc.dim), InvalidInput, "all zeros"),
        (Query(collection="photos", vector=[np.nan] * enc.dim), InvalidInput, "NaN"),
        (Query(collection="photos", image=b"not an image"), InvalidInput, "not an image"),
        (Query(collection="photos", text="x", filter="width >> 3"), FilterError, "column 8"),
        (Query(collection="nope", text="x"), NotFound, "nope"),
        (Query(collection="photos", item_id=999_999), NotFound, "item 999999"),
        (Query(collection="photos", text="x", vector=[1.0]), InvalidInput, "not text and vector"),
    ]
    for query, error, words in cases:
        with pytest.raises(error, match=words):
            searcher.search(query)


def test_deadline(env):
    searcher = env[0]
    with pytest.raises(DeadlineExceeded):
        searcher.search(Query(collection="photos", text="x"), deadline=time.monotonic() - 1)


def test_models_are_loaded_once_and_shared(env, tiny_siglip_dir, tmp_path):
    _, store, enc, _ = env
    models = Models(batching=True)
    try:
        got = []
        frozen = gc.get_freeze_count()
        threads = [threading.Thread(target=lambda: got.append(models.dual(str(tiny_siglip_dir)))) for _ in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len({id(m) for m in got}) == 1
        assert gc.get_freeze_count() > frozen  # the loaded model is out of the collector's full passes
        store.create_collection("photos2", got[0])
        assert models.for_collection(store.collection("photos2")) is got[0]
        assert models.for_collection(store.collection("photos")) is got[0]
        assert models.loaded() == [f"dual:{tiny_siglip_dir}"]
    finally:
        store.drop_collection("photos2")
        models.close()
    limited = Models(allow=["other"])
    with pytest.raises(NotFound, match="not served here"):
        limited.dual(str(tiny_siglip_dir))


def test_collection_bound_to_another_encoder_is_a_conflict(env, tiny_blip_dirs):
    searcher, store, _, _ = env
    blip = encoders.load(tiny_blip_dirs[0])
    store.create_collection("blipped", blip)
    try:
        row = store.catalog.get_collection("blipped")
        with store.catalog.session() as s:  # simulate a collection whose weights changed on disk
            s.get(type(row), row.id).encoder_digest = "0" * 32
        store._handles.pop("blipped", None)
        with pytest.raises(Conflict, match="bound to encoder"):
            Searcher(store, Models(batching=False)).search(Query(collection="blipped", text="x"))
    finally:
        store.drop_collection("blipped")


def test_rerank_orders_by_itm_probability(env, tiny_blip_dirs):
    searcher, store, _, ids = env
    itm = tiny_blip_dirs[0]
    text = "a red circle on a white background"
    first = searcher.search(Query(collection="photos", text=text, top_k=10))
    result = searcher.search(Query(collection="photos", text=text, top_k=4, rerank_model=str(itm), rerank_depth=10))
    assert len(result.hits) == 4 and result.timing["rerank_ms"] > 0
    rr = encoders.load_reranker(itm)
    rows = store.collection("photos").get([h.id for h in first.hits])
    from encoders.preprocess import load_image

    probs = rr.score([load_image(rows[h.id].uri) for h in first.hits], [text] * len(first.hits))
    expected = sorted(zip(first.hits, probs), key=lambda hp: (-hp[1], -hp[0].score))[:4]
    assert [h.id for h in result.hits] == [h.id for h, _ in expected]
    for hit, (orig, p) in zip(result.hits, expected):
        assert hit.rerank_score == pytest.approx(float(p), abs=1e-5)
        assert hit.score == pytest.approx(orig.score, abs=1e-6)  # the first-stage score is kept


def test_relevance_cut_offs(env, tiny_blip_dirs):
    searcher = env[0]
    itm = str(tiny_blip_dirs[0])
    text = "a red circle on a white background"
    full = searcher.search(Query(collection="photos", text=text, top_k=10))
    cut = full.hits[4].score
    kept = searcher.search(Query(collection="photos", text=text, top_k=10, min_score=cut))
    assert [h.id for h in kept.hits] == [h.id for h in full.hits if h.score >= cut] and len(kept.hits) == 5
    none = searcher.search(Query(collection="photos", text=text, top_k=10, min_score=full.hits[0].score + 1))
    assert none.hits == []
    reranked = searcher.search(Query(collection="photos", text=text, top_k=10, rerank_model=itm, rerank_depth=10))
    probs = sorted(h.rerank_score for h in reranked.hits)
    p = probs[len(probs) // 2]
    above = searcher.search(Query(collection="photos", text=text, top_k=10, rerank_model=itm, rerank_depth=10,
                                  min_rerank_probability=p))
    assert [h.id for h in above.hits] == [h.id for h in reranked.hits if h.rerank_score >= p]
    assert 0 < len(above.hits) < len(reranked.hits)
    for bad, words in ((dict(min_score=float("nan")), "finite"), (dict(min_rerank_probability=0.5), "needs a reranker"),
                       (dict(min_rerank_probability=1.5, rerank_model=itm), "0..1")):
        with pytest.raises(InvalidInput, match=words):
            searcher.search(Query(collection="photos", text=text, **bad))


def test_rerank_depth_bounds(env, tiny_blip_dirs):
    searcher = env[0]
    itm = str(tiny_blip_dirs[0])
    shallow = searcher.search(Query(collection="photos", text="x", top_k=6, rerank_model=itm, rerank_depth=2))
    assert all(h.rerank_score is not None for h in shallow.hits)  # depth is never below top_k
    capped = Searcher(searcher.store, searcher.models, max_depth=3)
    deep = capped.search(Query(collection="photos", text="x", top_k=6, rerank_model=itm, rerank_depth=100))
    assert [h.rerank_score is not None for h in deep.hits] == [True] * 3 + [False] * 3
    assert deep.candidates == 6
    with pytest.raises(InvalidInput, match="rerank_text"):
        searcher.search(Query(collection="photos", image=png_bytes(1), rerank_model=itm))
    by_image = searcher.search(Query(collection="photos", image=png_bytes(1), rerank_model=itm, rerank_text="a cat",
                                     top_k=2))
    assert all(h.rerank_score is not None for h in by_image.hits)


def test_captions_from_a_captioner(env, tiny_blip_dirs):
    searcher, store, _, _ = env
    cap_dir = str(tiny_blip_dirs[1])
    result = searcher.search(Query(collection="photos", text="x", top_k=2, caption_model=cap_dir))
    captioner = encoders.load_captioner(cap_dir)
    from encoders.preprocess import load_image

    for hit in result.hits:
        assert hit.caption == captioner.caption([load_image(hit.uri)])[0]


def test_cli_query_on_a_data_dir(env, capsys):
    from search.cli import main

    store = env[1]
    assert main(["query", "a photo of a cat", "--collection", "photos", "-k", "3", "--json",
                 "--data-dir", store.data_dir, "--filter", "meta.color = 'blue'"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["hits"]) == 3 and all(h["metadata"]["color"] == "blue" for h in out["hits"])
    assert out["filter_strategy"] == "id_selector"
    assert main(["query", "a photo of a cat", "--collection", "photos", "-k", "2", "--data-dir", store.data_dir]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("rank\tid\tscore") and len(table) == 3
    assert main(["query", "x", "--collection", "photos", "--data-dir", store.data_dir, "--filter", "colour = 1"]) == 2
    assert "unknown field 'colour'" in capsys.readouterr().err
    assert main(["query", "x", "--collection", "nope", "--data-dir", store.data_dir]) == 3
    assert COLORS  # keep the import honest: metadata colours come from search_helpers
