"""`mmsearch import`: precomputed embeddings from clip-retrieval output, parquet and .npy + manifest; bad rows
and shards recorded, resume after SIGKILL, dim checks, text queries over an imported collection."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import encoders
from indexer.jobs import ImportOptions, import_embeddings
from indexer.store import Store
from indexer_helpers import assert_index_matches_catalog
from search import cli
from search.filters import compile_filter
from indexer.catalog import Item
from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from tiny_clip import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "ckpt")[0]


@pytest.fixture(scope="module")
def enc(clip_dir):
    return encoders.load(clip_dir)


def unit(rng, n, d):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_clip_retrieval(root, dim, rng):
    """clip_inference's output: shards 0 and 1 of 6 rows, a ragged last shard 2 of 3 rows, shard 3 without
    its metadata file, shard 4 with a corrupt one; float16 vectors as clip-retrieval writes them. Row 2 of
    shard 0 is NaN, row 4 all zeros. Returns {uri: unit vector} of the rows that must be imported."""
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    expected = {}
    sizes = [6, 6, 3, 2, 2]
    row = 0
    for shard, n in enumerate(sizes):
        vecs = (unit(rng, n, dim) * 3).astype(np.float16)  # not unit length: import normalises
        if shard == 0:
            vecs[2, 5] = np.nan
            vecs[4] = 0
        np.save(root / "img_emb" / f"img_emb_{shard}.npy", vecs)
        np.save(root / "text_emb" / f"text_emb_{shard}.npy", vecs)  # not read
        uris = [f"/photos/{row + i:04d}.jpg" for i in range(n)]
        table = pa.table({
            "image_path": uris,
            "caption": [f"caption {row + i}" for i in range(n)],
            "width": pa.array([100 + row + i for i in range(n)], pa.int64()),
            "height": pa.array([50] * n, pa.int32()),
            "score": pa.array([0.5 + i for i in range(n)], pa.float64()),
            "nsfw": pa.array([i % 2 == 0 for i in range(n)]),
            "license": pa.array(["cc0" if i % 3 == 0 else None for i in range(n)], pa.string()),
            "taken": pa.array([dt.datetime(2020, 1, 1 + i) for i in range(n)], pa.timestamp("us")),
            "tags": pa.array([["a", "b"]] * n),
            "exif.iso": pa.array([100 * (i + 1) for i in range(n)], pa.int64()),
            "blob": pa.array([b"\x00"] * n, pa.binary()),
        })
        meta_path = root / "metadata" / f"metadata_{shard}.parquet"
        if shard == 3:
            pass  # missing metadata file
        elif shard == 4:
            meta_path.write_bytes(b"PAR1 this is not parquet")
        else:
            pq.write_table(table, meta_path)
            for i, uri in enumerate(uris):
                v = vecs[i].astype(np.float32)
                if np.isfinite(v).all() and np.linalg.norm(v) > 0:
                    expected[uri] = v / np.linalg.norm(v)
        row += n
    return expected


def test_clip_retrieval_layout(enc, tmp_path):
    expected = write_clip_retrieval(tmp_path / "out", enc.dim, np.random.default_rng(0))
    assert len(expected) == 13
    with Store(tmp_path / "data") as store:
        r = import_embeddings(store, "laion", enc, [str(tmp_path / "out")], ImportOptions(batch_size=4))
        assert (r.added, r.skipped, r.failed, r.state) == (13, 0, 4, "done")
        coll = store.collection("laion")
        assert coll.row.encoder_name == enc.name and coll.count() == 13
        items = coll.get(range(1, 100))
        by_uri = {it.uri: it for it in items.values()}
        assert set(by_uri) == set(expected)
        for uri, it in by_uri.items():
            np.testing.assert_allclose(it.vector_array(), expected[uri], atol=1e-6)
        it = by_uri["/photos/0003.jpg"]
        assert (it.width, it.height, it.caption) == (103, 50, "caption 3")
        assert it.meta == {"score": 3.5, "nsfw": False, "license": "cc0", "taken": "2020-01-04T00:00:00",
                           "tags": ["a", "b"], "exif": {"iso": 400}}
        # every column type is filterable where the filter language reaches it
        for expr, want in [("meta.exif.iso = 400", 2), ("meta.license = \"cc0\"", 5), ("meta.nsfw = true", 6),
                           ("meta.score >= 4", 3), ("width >= 110", 5), ("meta.taken >= \"2020-01-05\"", 3)]:
            ids = store.catalog.select_ids(coll.id, compile_filter(expr, Item, store.catalog.dialect))
            assert len(ids) == want, expr
        errors = {(os.path.basename(e.uri), e.reason.split(" ")[0]) for e in store.catalog.job_errors(r.job_id)}
        reasons = " | ".join(e.reason for e in store.catalog.job_errors(r.job_id))
        assert ("0002.jpg", "vector") in errors and ("0004.jpg", "vector") in errors
        assert "NaN" in reasons and "all zeros" in reasons
        assert "no metadata/metadata_3.parquet" in reasons and "unreadable parquet" in reasons
        assert_index_matches_catalog(coll)
        hits = coll.search(expected["/photos/0007.jpg"], k=1)[0]
        assert by_uri["/photos/0007.jpg"].id == hits[0].id
        # rerun: nothing new, nothing twice
        r2 = import_embeddings(store, "laion", enc, [str(tmp_path / "out")], ImportOptions(batch_size=4))
        assert (r2.added, r2.skipped) == (0, 13) and coll.count() == 13


def test_clip_retrieval_url_column_is_the_uri(enc, tmp_path):
    root = tmp_path / "out"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    np.save(root / "img_emb" / "img_emb_0.npy", unit(np.random.default_rng(1), 3, enc.dim))
    pq.write_table(pa.table({"image_path": ["000", "001", "002"], "url": ["http://x/0", None, "http://x/2"]}),
                   root / "metadata" / "metadata_0.parquet")
    with Store(tmp_path / "data") as store:
        r = import_embeddings(store, "web", enc, [str(root)])
        assert (r.added, r.failed) == (2, 1)
        rows = store.collection("web").get([1, 2])
        assert sorted(x.uri for x in rows.values()) == ["http://x/0", "http://x/2"]
        assert rows[1].meta == {"image_path": "000"}
        [err] = store.catalog.job_errors(r.job_id)
        assert err.reason == "row has no uri" and err.uri.endswith("metadata_0.parquet:1")


@pytest.mark.parametrize("kind", ["fixed", "list"])
def test_plain_parquet(enc, tmp_path, kind):
    rng = np.random.default_rng(2)
    vecs = unit(rng, 20, enc.dim)
    if kind == "fixed":
        column = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()), enc.dim)
    else:
        values = [list(map(float, v)) for v in vecs]
        values[3] = None
        values[4] = values[4][:-1]  # one value short
        column = pa.array(values, pa.list_(pa.float64()))
    table = pa.table({"uri": [f"s3://b/{i}" for i in range(20)], "embedding": column,
                      "label": [f"l{i % 4}" for i in range(20)], "rank": list(range(20))})
    pq.write_table(table, tmp_path / "items.parquet", row_group_size=7)
    with Store(tmp_path / "data") as store:
        r = import_embeddings(store, "pq", enc, [str(tmp_path / "items.parquet")], ImportOptions(batch_size=6))
        bad = 0 if kind == "fixed" else 2
        assert (r.added, r.failed) == (20 - bad, bad)
        coll = store.collection("pq")
        got = {it.uri: it for it in coll.get(range(1, 30)).values()}
        np.testing.assert_allclose(got["s3://b/7"].vector_array(), vecs[7], atol=1e-6)
        assert got["s3://b/7"].meta == {"label": "l3", "rank": 7}
        if bad:
            reasons = sorted(e.reason for e in store.catalog.job_errors(r.job_id))
            assert reasons == ["no vector (null)", f"vector has {enc.dim - 1} values, not {enc.dim}"]


def test_npy_with_manifest(enc, tmp_path):
    vecs = unit(np.random.default_rng(3), 5, enc.dim)
    np.save(tmp_path / "emb.npy", vecs)
    (tmp_path / "emb.jsonl").write_text("".join(json.dumps({"uri": f"u{i}", "split": "train", "n": i}) + "\n"
                                                for i in range(4)))  # one row short
    np.save(tmp_path / "other.npy", vecs[:2])
    (tmp_path / "rows.csv").write_text("path,split\nc0,test\nc1,test\n")
    with Store(tmp_path / "data") as store:
        r = import_embeddings(store, "np", enc, [str(tmp_path / "emb.npy")])
        assert (r.added, r.failed) == (4, 1)
        assert "rows 4..4 have no manifest row" in store.catalog.job_errors(r.job_id)[0].reason
        r = import_embeddings(store, "np", enc, [str(tmp_path / "other.npy")],
                              ImportOptions(manifest=str(tmp_path / "rows.csv")))
        assert r.added == 0 and r.skipped == 2  # the same vectors as u0, u1: the same content is held once
        coll = store.collection("np")
        assert {it.uri: it.meta for it in coll.get(range(1, 10)).values()}["u2"] == {"split": "train", "n": 2}


def test_cli_import_errors_are_one_line(clip_dir, enc, tmp_path, capsys):
    data = ["--data-dir", str(tmp_path / "d")]
    np.save(tmp_path / "wide.npy", unit(np.random.default_rng(4), 3, enc.dim + 1))
    (tmp_path / "wide.jsonl").write_text('{"uri": "a"}\n{"uri": "b"}\n{"uri": "c"}\n')
    assert cli.main(["import", str(tmp_path / "wide.npy"), "--collection", "c", "--model", str(clip_dir), *data]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{enc.dim + 1}-d vectors" in err and f"{enc.dim}-d" in err
    with Store(tmp_path / "d") as store:
        assert store.catalog.find_collection("c") is None  # refused before anything was created
    assert cli.main(["import", str(tmp_path / "nope"), "--collection", "c", "--model", str(clip_dir), *data]) == 2
    assert cli.main(["import", str(tmp_path / "wide.jsonl"), "--collection", "c", "--model", str(clip_dir),
                     *data]) == 2
    (tmp_path / "v.npy").write_bytes(b"garbage")
    assert cli.main(["import", str(tmp_path / "v.npy"), "--collection", "c", "--model", str(clip_dir), *data]) == 2
    assert "not a readable .npy" in capsys.readouterr().err
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert cli.main(["import", str(tmp_path / "bad.parquet"), "--collection", "c", "--model", str(clip_dir),
                     *data]) == 2
    assert "unreadable parquet" in capsys.readouterr().err
    pq.write_table(pa.table({"uri": ["a"], "n": [1]}), tmp_path / "novec.parquet")
    assert cli.main(["import", str(tmp_path / "novec.parquet"), "--collection", "c", "--model", str(clip_dir),
                     *data]) == 2
    assert "no vector column" in capsys.readouterr().err
    np.save(tmp_path / "ok.npy", unit(np.random.default_rng(5), 2, enc.dim))
    (tmp_path / "ok.csv").write_text("uri\nx\ny\n")
    assert cli.main(["import", str(tmp_path / "ok.npy"), "--collection", "c", *data]) == 2  # new: needs --model
    assert cli.main(["import", str(tmp_path / "ok.npy"), "--collection", "c", "--model", str(clip_dir),
                     *data]) == 0
    assert "job 1: 2 added" in capsys.readouterr().out
    assert cli.main(["jobs", "--json", *data]) == 0
    [job] = json.loads(capsys.readouterr().out)
    assert job["kind"] == "import" and job["state"] == "done" and job["added"] == 2


def test_text_query_over_imported_collection(clip_dir, enc, tmp_path, capsys):
    """Imported vectors answer text queries through the collection's model: here each row's vector is the
    model's own embedding of a text, so querying that text finds the row first."""
    texts = ["a red bus", "two cats on a sofa", "snowy mountain", "a bowl of soup", "city at night"]
    np.save(tmp_path / "emb.npy", enc.encode_texts(texts))
    (tmp_path / "emb.jsonl").write_text("".join(json.dumps({"uri": f"img{i}.jpg", "text": t}) + "\n"
                                                for i, t in enumerate(texts)))
    data = ["--data-dir", str(tmp_path / "d")]
    assert cli.main(["import", str(tmp_path / "emb.npy"), "--collection", "c", "--model", str(clip_dir), *data]) == 0
    capsys.readouterr()
    for i, text in enumerate(texts):
        assert cli.main(["query", text, "--collection", "c", "-k", "2", "--json", *data]) == 0
        hits = json.loads(capsys.readouterr().out)["hits"]
        assert hits[0]["uri"] == f"img{i}.jpg" and hits[0]["metadata"] == {"text": text}
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def _live_uris(db):
    import sqlite3

    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT uri FROM items WHERE deleted = 0")]


def test_sigkill_mid_import_then_resume(clip_dir, enc, tmp_path):
    n = 4000
    vecs = unit(np.random.default_rng(6), n, enc.dim)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel(), pa.float32()), enc.dim)
    pq.write_table(pa.table({"uri": [f"r{i}" for i in range(n)], "vector": column, "i": list(range(n))}),
                   tmp_path / "big.parquet", row_group_size=100)
    data = str(tmp_path / "d")
    cmd = [sys.executable, "-m", "search.cli", "import", str(tmp_path / "big.parquet"), "--collection", "c",
           "--model", str(clip_dir), "--batch", "100", "--data-dir", data, "--no-progress"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = os.path.join(data, "catalog.db")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if os.path.exists(db):
            try:
                if len(_live_uris(db)) >= 300:
                    break
            except Exception:  # the catalog is being created
                pass
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(_live_uris(db))
    assert 300 <= partial < n, "the import finished before it could be killed"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{n - partial} added, 0 updated, {partial} skipped" in done.stdout
    uris = _live_uris(db)
    assert len(uris) == n and len(set(uris)) == n
    with Store(data) as store:
        jobs = store.catalog.list_jobs()
        store.catalog.mark_stale_jobs(jobs[0].collection_id)
        jobs = store.catalog.list_jobs()
        assert [j.state for j in jobs] == ["done", "interrupted"] and jobs[0].resumed_from == jobs[1].id
        coll = store.collection("c")
        assert coll.count() == n
        assert_index_matches_catalog(coll)


def test_update_replaces_known_uris_in_place(enc, tmp_path):
    vecs = unit(np.random.default_rng(8), 3, enc.dim)
    np.save(tmp_path / "emb.npy", vecs)
    (tmp_path / "emb.csv").write_text("uri,v\na,1\nb,1\na,2\n")  # "a" twice: the first row wins
    with Store(tmp_path / "data") as store:
        r = import_embeddings(store, "c", enc, [str(tmp_path / "emb.npy")])
        assert (r.added, r.skipped) == (2, 1)
        before = {it.uri: it for it in store.collection("c").get(range(1, 10)).values()}
        assert before["a"].meta == {"v": 1}
        vecs[1] = unit(np.random.default_rng(9), 1, enc.dim)[0]
        np.save(tmp_path / "emb.npy", vecs)
        (tmp_path / "emb.csv").write_text("uri,v\nx,1\nb,2\n")  # x: the vector "a" holds; b: new vector and meta
        np.save(tmp_path / "emb.npy", vecs[:2])
        r = import_embeddings(store, "c", enc, [str(tmp_path / "emb.npy")], ImportOptions(update=True))
        assert (r.added, r.updated, r.skipped) == (0, 1, 1)  # x is refused: its content is item "a"
        coll = store.collection("c")
        after = {it.uri: it for it in coll.get(range(1, 10)).values()}
        assert set(after) == {"a", "b"} and after["b"].id == before["b"].id and after["b"].meta == {"v": 2}
        np.testing.assert_allclose(after["b"].vector_array(), vecs[1], atol=1e-6)
        assert coll.search(vecs[1], k=1)[0][0].id == after["b"].id


def test_clip_retrieval_on_postgres(enc, pg_url, tmp_path):  # noqa: F811
    expected = write_clip_retrieval(tmp_path / "out", enc.dim, np.random.default_rng(0))
    with Store(tmp_path / "d", db=pg_url) as store:
        r = import_embeddings(store, "laion", enc, [str(tmp_path / "out")], ImportOptions(batch_size=5))
        assert (r.added, r.failed) == (13, 4)
        coll = store.collection("laion")
        got = {it.uri: it for it in coll.get(range(1, 100)).values()}
        assert set(got) == set(expected)
        assert got["/photos/0003.jpg"].meta["exif"] == {"iso": 400}
        ids = store.catalog.select_ids(coll.id, compile_filter("meta.exif.iso = 400", Item, store.catalog.dialect))
        assert len(ids) == 2
        r = import_embeddings(store, "laion", enc, [str(tmp_path / "out")], ImportOptions(batch_size=5))
        assert (r.added, r.skipped) == (0, 13)
        assert_index_matches_catalog(coll)
