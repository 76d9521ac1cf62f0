"""FAISS indices: kinds, search quality, removal, filtered search, persistence, rebuild / catch-up rules."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mmsearch.errors import Conflict, InvalidInput
from indexer.ann import base as ann_base, spec as ann_spec
from indexer.store import Store
from indexer.ann import IndexFileError, IndexSpec, VectorIndex
from indexer_helpers import FakeBinding, add_rows, assert_index_matches_catalog, brute_force, clustered

DIM = 16


def build(kind: str, x: np.ndarray, ids: np.ndarray) -> VectorIndex:
    spec = IndexSpec.parse(kind)
    index = VectorIndex.empty(spec, x.shape[1], x if VectorIndex.kinds[spec.resolve(len(x)).kind].trained else None, n_hint=len(x))
    index.add(ids, x)
    return index


def test_spec_parsing():
    assert str(IndexSpec.parse(None)) == "auto"
    assert IndexSpec.parse("IVF256") == IndexSpec("ivf", 256)
    assert IndexSpec.parse("hnsw").resolve(10) == IndexSpec("hnsw", 32)
    assert IndexSpec.parse("auto").resolve(10).kind == "flat"
    assert IndexSpec.parse("auto").resolve(10 ** 6).kind == "ivf"
    nlist = IndexSpec.parse("ivf").resolve(200_000).param
    assert 4 * 447 <= nlist <= 16 * 447  # 4..16 sqrt(n)
    for bad in ("pq16", "flat3", "ivf0", "hnsw2", "ivf;drop"):
        with pytest.raises(InvalidInput):
            IndexSpec.parse(bad)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_search_quality_and_removal(kind):
    x = clustered(3000, DIM, seed=1)
    ids = np.arange(1000, 4000, dtype=np.int64) * 7  # ids are item ids, not positions
    index = build(kind, x, ids)
    q = clustered(50, DIM, seed=2)
    want_s, want_i = brute_force(x, ids, q, 10)
    nprobe = index.index.nlist if kind == "ivf" else None  # probing every list makes ivf exact
    got_s, got_i = index.search(q, 10, nprobe=nprobe, ef=256)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_i, want_i)])
    assert recall == 1.0 if kind != "hnsw" else recall >= 0.95
    if kind == "flat":
        np.testing.assert_allclose(got_s, want_s, atol=1e-5)

    gone = want_i[:, 0]  # remove every query's best hit
    assert index.remove(gone) == len(set(gone.tolist()))
    assert index.remove(gone) == 0
    assert index.ntotal == 3000 - len(set(gone.tolist()))
    _, after = index.search(q, 10, nprobe=nprobe, ef=256)
    assert not set(after.ravel().tolist()) & set(gone.tolist())

    # re-adding an id with a new vector replaces it (hnsw: compaction), never duplicates
    target = q[0] / np.linalg.norm(q[0])
    index.add(np.array([gone[0]]), target[None, :])
    s, i = index.search(q[:1], 3, nprobe=nprobe, ef=256)
    assert i[0, 0] == gone[0] and abs(s[0, 0] - 1.0) < 1e-5
    assert len(index.ids()) == len(np.unique(index.ids())) == index.ntotal


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_filtered_search_is_exact_and_full(kind):
    x = clustered(5000, DIM, seed=3)
    ids = np.arange(1, 5001, dtype=np.int64)
    index = build(kind, x, ids)
    rng = np.random.default_rng(0)
    allowed = np.sort(rng.choice(ids, 50, replace=False))  # 1% selectivity
    q = clustered(20, DIM, seed=4)
    got_s, got_i = index.search(q, 10, allowed=allowed, nprobe=1, ef=16)
    want_s, want_i = brute_force(x[allowed - 1], allowed, q, 10)
    assert (got_i >= 0).all()
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    # fewer allowed than k: everything allowed, padded with -1
    s, i = index.search(q[:1], 10, allowed=allowed[:3])
    assert sorted(i[0, :3].tolist()) == allowed[:3].tolist() and (i[0, 3:] == -1).all()
    # a large allowed set goes through the id selector and still returns only allowed ids
    big = ids[ids % 2 == 0]
    old = ann_base.EXACT_FILTER_MAX
    ann_base.EXACT_FILTER_MAX = 100
    try:
        _, i = index.search(q, 10, allowed=big, nprobe=index.index.nlist if kind == "ivf" else None, ef=128)
    finally:
        ann_base.EXACT_FILTER_MAX = old
    assert (i % 2 == 0).all() and (i > 0).all()


def test_search_checks_inputs():
    index = build("flat", clustered(10, DIM), np.arange(10))
    with pytest.raises(InvalidInput, match="dim"):
        index.search(np.zeros((1, DIM + 1), np.float32), 3)
    with pytest.raises(InvalidInput, match="k must"):
        index.search(np.zeros((1, DIM), np.float32), 0)
    with pytest.raises(InvalidInput, match="nprobe"):
        index.search(np.zeros((1, DIM), np.float32), 3, nprobe=0)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_roundtrip_and_corruption(tmp_path, kind):
    x = clustered(500, DIM, seed=5)
    ids = np.arange(500, dtype=np.int64) + 10
    index = build(kind, x, ids)
    index.remove(ids[:7])
    index.watermark = 42
    path = str(tmp_path / "c.faiss")
    index.save(path, {"collection_id": 1})
    loaded, meta = VectorIndex.load(path)
    assert meta["watermark"] == 42 and meta["collection_id"] == 1 and loaded.spec == index.spec
    q = clustered(5, DIM, seed=6)
    np.testing.assert_array_equal(loaded.search(q, 5)[1], index.search(q, 5)[1])
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]

    payload = tmp_path / meta["payload"]  # the FAISS payload lives beside the header, named by it
    assert [p.name for p in tmp_path.glob("*.payload")] == [payload.name]
    data = bytearray(payload.read_bytes())
    data[-20] ^= 0xFF
    payload.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="checksum"):
        VectorIndex.load(path)
    payload.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(IndexFileError, match="truncated"):
        VectorIndex.load(path)
    payload.unlink()
    with pytest.raises(IndexFileError, match="no such file"):
        VectorIndex.load(path)
    head = open(path, "rb").read()
    open(path, "wb").write(head[: len(head) // 2])
    with pytest.raises(IndexFileError, match="truncated|not JSON"):
        VectorIndex.load(path)
    open(path, "wb").write(b"not an index at all")
    with pytest.raises(IndexFileError, match="not an mmsearch index"):
        VectorIndex.load(path)


# ---- through the Store: the index file follows the catalog ------------------------------------------------


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "data") as st:
        yield st


def _collection(store, name="c", spec=None):
    return store.create_collection(name, FakeBinding(dim=DIM), spec)


def test_store_search_get_delete(store):
    coll = _collection(store)
    x = clustered(300, DIM, seed=7)
    ids = add_rows(coll, x, meta=lambda n: {"n": n, "even": n % 2 == 0})
    hits = coll.search(x[5], k=3)
    assert hits[0][0].id == ids[5] and abs(hits[0][0].score - 1) < 1e-5
    from indexer.catalog import Item

    hits = coll.search(x[:2], k=4, where=Item.meta["even"].as_boolean().is_(True))
    assert all(len(h) == 4 and all(coll.get([x.id])[x.id].meta["even"] for x in h) for h in hits)
    assert [h.id for h in coll.search(x[9], k=2, ids=[int(ids[9]), int(ids[10])])[0]] == [ids[9], ids[10]]
    assert set(coll.get([int(ids[0]), 999999])) == {int(ids[0])}
    assert coll.delete(ids=[int(ids[5])]) == 1
    assert coll.delete(uris=["mem://6", "mem://nope"]) == 1
    assert coll.delete(where=Item.meta["n"].as_integer() >= 200) == 100
    assert coll.count() == 198
    assert all(h.id not in (ids[5], ids[6]) for h in coll.search(x[5], k=20)[0])
    assert_index_matches_catalog(coll)
    with pytest.raises(InvalidInput):
        coll.delete()
    with pytest.raises(InvalidInput, match="dim"):
        coll.search(np.zeros(DIM + 1, np.float32))


def test_search_at_an_earlier_revision(store):
    """The search path reads (revision, purged_rev) before encoding the query and hands it to search: an
    index that moved past it meanwhile (this process committed) is used as it is, not rebuilt; one behind
    it catches up."""
    coll = _collection(store)
    x = clustered(60, DIM, seed=3)
    ids = add_rows(coll, x[:30])
    handle, revision = store.collection_at("c")
    assert handle is coll and revision == store.catalog.revision(coll.id)
    assert handle.search(x[0], k=1, revision=revision)[0][0].id == ids[0]
    later = add_rows(coll, x[30:40], start=30)  # committed by "another process": the index is behind
    coll.apply_commit(*store.catalog.revision(coll.id)[:1], np.asarray(later), x[30:40])  # this one applies it
    built = []
    real_build = coll._build
    coll._build = lambda *a, **k: built.append(1) or real_build(*a, **k)
    assert coll.search(x[35], k=1, revision=revision)[0][0].id == later[5]  # index ahead of `revision`
    assert not built
    newest = add_rows(coll, x[40:50], start=40)
    _, now = store.collection_at("c")
    assert coll.search(x[45], k=1, revision=now)[0][0].id == newest[5]  # behind: caught up to `now`
    assert not built
    assert_index_matches_catalog(coll)


def test_encoder_binding(store):
    coll = _collection(store)
    coll.check_encoder(FakeBinding(dim=DIM, name="same weights elsewhere"))
    with pytest.raises(Conflict, match="bound to encoder"):
        coll.check_encoder(FakeBinding(dim=DIM, digest="1" * 32))
    with pytest.raises(Conflict):
        store.open_or_create("c", FakeBinding(dim=DIM + 1))
    with pytest.raises(Conflict, match="already exists"):
        store.create_collection("c", FakeBinding(dim=DIM))
    with pytest.raises(InvalidInput):
        store.create_collection("../evil", FakeBinding(dim=DIM))


def _reopen(store):
    return Store(store.data_dir)


@pytest.mark.parametrize("damage", ["delete", "corrupt", "truncate"])
def test_rebuild_after_losing_the_index_file(store, damage):
    coll = _collection(store)
    add_rows(coll, clustered(200, DIM, seed=8))
    coll.save_index()
    path = store.index_path("c")
    if damage == "delete":
        os.unlink(path)
    elif damage == "corrupt":
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0x55
        open(path, "wb").write(bytes(data))
    else:
        os.truncate(path, os.path.getsize(path) - 100)
    with _reopen(store) as other:
        c2 = other.collection("c")
        assert c2.index.ntotal == 200
        assert_index_matches_catalog(c2)
    VectorIndex.load(path)  # rewritten, readable again


def test_index_behind_is_caught_up_ahead_or_foreign_is_rebuilt(store):
    coll = _collection(store)
    x = clustered(100, DIM, seed=9)
    add_rows(coll, x[:60])
    coll.save_index()
    add_rows(coll, x[60:], start=60)  # committed by "another process": the file is now behind
    with _reopen(store) as other:
        c2 = other.collection("c")
        assert c2.index.ntotal == 100 and c2.index.watermark == other.catalog.revision(c2.id)[0]
        assert_index_matches_catalog(c2)

    index, meta = VectorIndex.load(store.index_path("c"))  # make the file claim a future revision
    index.watermark = 10_000
    index.remove(index.ids()[:10])
    index.save(store.index_path("c"), {k: meta[k] for k in ("collection_id", "collection_uid", "encoder_digest")})
    with _reopen(store) as other:
        c2 = other.collection("c")
        assert c2.index.ntotal == 100 and c2.index.watermark < 10_000

    other_coll = _collection(store, "d")
    add_rows(other_coll, clustered(5, DIM, seed=10), start=1000)
    other_coll.save_index()
    os.replace(store.index_path("d"), store.index_path("c"))  # a foreign file in c's place
    with _reopen(store) as other:
        c2 = other.collection("c")
        assert c2.index.ntotal == 100
        assert_index_matches_catalog(c2)


def test_rebuild_purges_tombstones_and_old_files_are_not_trusted(store):
    coll = _collection(store)
    add_rows(coll, clustered(50, DIM, seed=11))
    coll.save_index()
    old = open(store.index_path("c"), "rb").read()
    coll.delete(uris=[f"mem://{i}" for i in range(10)])
    coll.rebuild()
    from sqlalchemy import func, select

    from indexer.catalog import Item
    with store.catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Item)) == 40  # tombstones purged
    open(store.index_path("c"), "wb").write(old)  # a backup from before the purge: cannot catch up
    with _reopen(store) as other:
        c2 = other.collection("c")
        assert c2.index.ntotal == 40
        assert_index_matches_catalog(c2)


def test_two_stores_see_each_others_writes(store):
    coll = _collection(store)
    x = clustered(40, DIM, seed=12)
    with _reopen(store) as reader:
        rc = reader.collection("c")
        assert rc.search(x[0], k=1) == [[]]
        ids = add_rows(coll, x)
        assert rc.search(x[3], k=1)[0][0].id == ids[3]  # caught up before searching
        coll.delete(ids=[int(ids[3])])
        assert rc.search(x[3], k=1)[0][0].id != ids[3]


@pytest.mark.parametrize("spec", ["flat", "ivf", "hnsw16"])
def test_rebuild_with_spec_and_auto_growth(store, spec, monkeypatch):
    coll = _collection(store)
    x = clustered(400, DIM, seed=13)
    add_rows(coll, x)
    index = coll.rebuild(spec)
    assert index.spec.kind == IndexSpec.parse(spec).kind and store.catalog.get_collection("c").index_spec == spec
    with _reopen(store) as other:  # the stored spec is honoured on open
        assert other.collection("c").index.spec == index.spec
    if spec == "flat":
        coll.rebuild("auto")
        monkeypatch.setattr(ann_spec, "AUTO_FLAT_MAX", 300)
        assert coll.maybe_retrain() and coll.index.spec.kind == "ivf"
        assert_index_matches_catalog(coll)


def test_upsert_replaces_by_uri_and_refuses_duplicate_content(store):
    from indexer.store import UpsertRow

    coll = _collection(store)
    x = clustered(4, DIM, seed=14)
    rows = [UpsertRow(uri=f"u{i}", sha256=f"{i:064x}", width=2, height=3, vector=x[i], meta={"i": i})
            for i in range(3)]
    rows.append(UpsertRow(uri="copy", sha256=f"{0:064x}", width=2, height=3, vector=x[0]))  # same content as u0
    out = coll.upsert(rows)
    assert [p is None for _, p in out] == [True, True, True, False]
    assert out[3][0] == out[0][0] and "the same image is already item" in out[3][1]
    [(same_id, problem)] = coll.upsert([UpsertRow(uri="u1", sha256="f" * 64, width=5, height=5, vector=x[3])])
    assert problem is None and same_id == out[1][0]
    row = coll.get([same_id])[same_id]
    assert row.sha256 == "f" * 64 and row.meta == {"i": 1} and row.width == 5
    assert coll.search(x[3], k=1)[0][0].id == same_id
    assert_index_matches_catalog(coll)
    with pytest.raises(InvalidInput, match="finite"):
        coll.upsert([UpsertRow(uri="bad", sha256="e" * 64, width=1, height=1, vector=np.full(DIM, np.nan))])


@pytest.mark.parametrize("occupant", ["fifo", "folder"])
def test_a_fifo_or_folder_at_the_index_path_is_an_unreadable_index(store, occupant, caplog):
    """Opening must not block on a FIFO (or crash on a folder): the index is rebuilt from the catalog; the
    FIFO is replaced by the saved file, a folder (not ours to remove) is left and the index serves from
    memory with a warning."""
    import threading

    coll = _collection(store)
    x = clustered(100, DIM, seed=15)
    ids = add_rows(coll, x)
    path = store.index_path("c")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path) if occupant == "fifo" else os.mkdir(path)
    result = {}

    def query():
        with _reopen(store) as other:
            result["hit"] = other.collection("c").search(x[4], k=1)[0][0].id
            other.collection("c").save_index()
    worker = threading.Thread(target=query, daemon=True)
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # unblock the reader so the test run can end, then fail
        with open(path, "wb"):
            pass
        pytest.fail("opening the collection blocked on the FIFO at its index path")
    assert result["hit"] == ids[4]
    if occupant == "fifo":
        VectorIndex.load(path)  # a regular, readable index file now
    else:
        assert os.path.isdir(path) and "serving it from memory" in caplog.text
    with _reopen(store) as other:  # and again: still answers
        assert other.collection("c").search(x[7], k=1)[0][0].id == ids[7]
        other.drop_collection("c")
