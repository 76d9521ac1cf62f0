"""Filtered search (indexer/ann/base.py: VectorIndex._filtered) returns the brute-force top-k over the allowed
ids, for every index kind and on both sides of every strategy threshold (exact scoring of a small set, a pass
under a bitmap of the ids widened by their share, the exhaustive pass when that comes back short), with
deleted ids (HNSW tombstones too) never returned; and through the store, where the catalog's id scan may
include tombstones that the index has dropped."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.ann import IndexSpec, VectorIndex
from indexer.ann import base as ann_base
from indexer.ann import ivf as ann_ivf
from indexer.catalog import Item
from indexer.store import Store
from indexer_helpers import FakeBinding, add_rows, brute_force, clustered
from search.filters import compile_filter

DIM = 32
N = 6_000
KINDS = ["flat", "ivf", "ivfsq8", "ivfsq16", "ivfpq", "hnsw", "hnswsq8"]
# thresholds made small so that sets on both sides of each fit this collection (compressed ivf*: k * refine)
IVF_EXACT, FETCH_EXACT, FLOAT_EXACT = 100, 200, 300


@pytest.fixture(scope="module")
def data():
    x = clustered(N, DIM, seed=41, clusters=40)
    ids = np.arange(N, dtype=np.int64) * 2 + 3  # not 0..n-1: the bitmap spans the largest id
    q = clustered(12, DIM, seed=42, clusters=40)
    return x, ids, q


@pytest.fixture
def small_thresholds(monkeypatch):
    monkeypatch.setattr(ann_ivf, "IVF_EXACT_MAX", IVF_EXACT)
    monkeypatch.setattr(ann_base, "EXACT_FETCH_MAX", FETCH_EXACT)
    monkeypatch.setattr(ann_base, "EXACT_FILTER_MAX", FLOAT_EXACT)


def _build(kind, x, ids):
    spec = IndexSpec.parse(kind)
    trained = VectorIndex.kinds[spec.resolve(len(x), DIM).kind].trained
    index = VectorIndex.empty(spec, DIM, x if trained else None, n_hint=len(x))
    where = {int(i): n for n, i in enumerate(ids)}
    index.vector_source = lambda want: (np.asarray([i for i in want if int(i) in where], np.int64),
                                        x[[where[int(i)] for i in want if int(i) in where]].reshape(-1, DIM))
    index.add(ids, x)
    return index


def _exhaustive(index, share: float) -> bool:
    """Whether a pass over this share of the index scans all of it (ivf*: nprobe / share >= nlist)."""
    return index.spec.kind.startswith("ivf") and index.ivf.nprobe / share >= index.ivf.nlist


@pytest.mark.parametrize("kind", KINDS)
def test_every_strategy_returns_the_brute_force_top_k(kind, data, small_thresholds):
    x, ids, q = data
    index = _build(kind, x, ids)
    rng = np.random.default_rng(7)
    gone = rng.choice(ids, 300, replace=False)  # deleted items: HNSW keeps them as tombstones
    index.remove(gone)
    live = np.setdiff1d(ids, gone)
    sizes = [5, IVF_EXACT - 1, IVF_EXACT + 1, FETCH_EXACT - 1, FETCH_EXACT + 1, FLOAT_EXACT - 1, FLOAT_EXACT + 1,
             1_500, 5_000] + ([10 * index.refine - 1, 10 * index.refine + 1] if index.compressed else [])
    for size in sizes:
        chosen = rng.choice(live, size, replace=False)
        allowed = np.concatenate([chosen, gone[:50], chosen[:20]])  # deleted and repeated ids are ignored
        got_s, got = index.search(q, 10, allowed=rng.permutation(allowed))
        k_want = min(10, size)
        want_s, want = brute_force(x[(np.sort(chosen) - 3) // 2], np.sort(chosen), q, k_want)
        assert not np.isin(got, gone).any(), (kind, size)
        assert (got[:, :k_want] >= 0).all() and (got[:, k_want:] == -1).all(), (kind, size)
        share = size / index.ntotal
        if kind in ("flat",) or size <= FLOAT_EXACT or _exhaustive(index, share) and not index.compressed:
            # scored exactly, or an exhaustive scan of float vectors: the same ids in the same order
            np.testing.assert_array_equal(got[:, :k_want], want, err_msg=f"{kind} {size}")
            np.testing.assert_allclose(got_s[:, :k_want], want_s, atol=1e-5)
        else:  # a pass over codes / a graph, re-ranked: as good as an unrestricted search, here all of it
            recall = np.mean([len(set(a) & set(b)) / k_want for a, b in zip(got[:, :k_want], want)])
            assert recall >= (0.99 if _exhaustive(index, share) else 0.95), (kind, size, recall)


def test_the_ivf_pass_widens_with_rarity_up_to_an_exhaustive_scan(data):
    x, ids, _q = data
    index = _build("ivf", x, ids)
    nprobe, nlist = index.ivf.nprobe, index.ivf.nlist
    assert index._filtered_effort(1.0, 10, None, None)[0] == nprobe
    assert index._filtered_effort(0.5, 10, None, None)[0] == min(nlist, 2 * nprobe)
    assert index._filtered_effort(0.5, 10, 3, None)[0] == 6  # a caller's nprobe is widened too
    assert index._filtered_effort(1e-4, 10, None, None)[0] == nlist


def test_hnsw_tombstones_stay_out_of_the_bitmap(data, small_thresholds):
    x, ids, q = data
    index = _build("hnsw", x, ids)
    _, best = index.search(q[:1], 1)
    index.remove(best[0])  # a tombstone in the graph
    assert best[0, 0] in index._dead
    _, got = index.search(q[:1], 10, allowed=ids)  # every id allowed: the pass under the bitmap
    assert best[0, 0] not in got


def _store_collection(tmp_path, kind):
    store = Store(tmp_path / "data")
    coll = store.create_collection("c", FakeBinding(dim=DIM), kind)
    x = clustered(3000, DIM, seed=51, clusters=30)
    ids = np.asarray(add_rows(coll, x, meta=lambda i: {"tag": "a" if i % 10 == 0 else "b", "score": (i % 1000) / 1000}))
    coll.rebuild()
    return store, coll, x, ids


@pytest.mark.parametrize("kind", ["ivf", "ivfsq8", "hnsw"])
def test_store_filters_skip_deleted_items_whoever_deleted_them(tmp_path, kind, small_thresholds):
    store, coll, x, ids = _store_collection(tmp_path, kind)
    q = clustered(5, DIM, seed=52, clusters=30)
    with Store(store.data_dir) as writer:  # another process deletes: the catalog keeps tombstones
        dead = writer.collection("c").delete(where=compile_filter("meta.score >= 0.5", Item, "sqlite"))
        assert dead == 1500
    width = compile_filter("width = 1", Item, "sqlite")  # every item: the scan returns the tombstones too
    assert len(store.catalog.select_ids(coll.id, width, tombstones=True)) == 3000
    assert len(store.catalog.select_ids(coll.id, width)) == 1500
    live = np.asarray([i for n, i in enumerate(ids) if (n % 1000) / 1000 < 0.5])
    for expr, keep in [("width = 1", lambda n: True), ('meta.tag = "a"', lambda n: n % 10 == 0),
                       ("meta.score < 0.1", lambda n: (n % 1000) < 100)]:
        chosen = np.asarray([i for n, i in enumerate(ids) if (n % 1000) < 500 and keep(n)])
        hits = coll.search(q, k=10, where=compile_filter(expr, Item, "sqlite"))
        got = np.array([[h.id for h in row] for row in hits])
        _, want = brute_force(x[np.searchsorted(ids, chosen)], chosen, q / np.linalg.norm(q, axis=1, keepdims=True), 10)
        assert np.isin(got, live).all(), expr
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
        exact = len(chosen) <= IVF_EXACT or kind == "ivf" and _exhaustive(coll.index, len(chosen) / 1500)
        assert recall >= (1.0 if exact else 0.95), (expr, recall)
    store.close()


@pytest.mark.parametrize("kind", KINDS)
def test_id_caches_follow_writes_in_place(kind, data):
    """Writes update the sorted ids and the membership mask the filtered path reads, instead of dropping
    them; after any mix of adds, replacements, removals and re-adds they equal what a fresh listing gives."""
    x, ids, q = data
    index = _build(kind, x[:3000], ids[:3000])
    rng = np.random.default_rng(9)
    index.search(q[:1], 10, allowed=ids[:500])  # builds the caches
    for step in range(6):
        gone = rng.choice(index.ids(), 200, replace=False)
        index.remove(gone)
        fresh = ids[3000 + 100 * step: 3100 + 100 * step]  # new ids, past the mask's end
        again = gone[:50]  # removed ones come back (HNSW: tombstones revived)
        both = np.concatenate([fresh, again, index.ids()[:20]])  # ... beside replacements
        index.add(both, x[(both - 3) // 2])
        cached_ids, cached_mask = index.ids().copy(), index._member_mask().copy()
        index._ids_cache = index._mask_cache = None
        np.testing.assert_array_equal(cached_ids, index.ids())
        np.testing.assert_array_equal(cached_mask[:len(index._member_mask())], index._member_mask())
        assert not cached_mask[len(index._member_mask()):].any()
        assert len(index.ids()) == index.ntotal


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_sparse_ids_use_a_hashed_selector(kind, data, small_thresholds):
    """Ids far apart (too sparse for a bitmap over 0..max) still filter exactly: a hashed id set is used."""
    x, ids, q = data
    sparse = ids * 10**9
    index = _build(kind, x, sparse)
    assert index._member_mask() is None
    chosen = sparse[::3]
    _, got = index.search(q, 10, allowed=chosen, nprobe=index.ivf.nlist if kind == "ivf" else None)
    _, want = brute_force(x[::3], chosen, q, 10)
    np.testing.assert_array_equal(got, want)
