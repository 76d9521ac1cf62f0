"""`mmsearch import --engine ray` on the real two-node loopback cluster (tests/ray_cluster.py) into a real
PostgreSQL catalog: a clip-retrieval folder (shards, a ragged last one, bad rows and shards) imports as the
local import does; a driver killed mid-import and rerun holds every row once; refusals are one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import encoders
from indexer.jobs import ImportOptions, import_embeddings
from indexer.store import Store
from indexer_helpers import assert_index_matches_catalog
from search import cli
from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from ray_cluster import ROOT
from test_import import unit, write_clip_retrieval
from test_ray_job import assert_same_rows, committed, listed_job, live_rows, ray_cli, wait_committed


def ray_import(cluster, env, paths, model, data_dir, db, *extra, wait=True):
    return ray_cli("import", cluster, env, paths, model, data_dir, db, *extra, wait=wait)


def test_ray_import_equals_the_local_import(ray_cluster, tiny_siglip_dir, pg_url, tmp_path):  # noqa: F811
    cluster, env = ray_cluster
    enc = encoders.load(tiny_siglip_dir)
    expected_vectors = write_clip_retrieval(tmp_path / "out", enc.dim, np.random.default_rng(0))
    with Store(tmp_path / "local") as local:
        want = import_embeddings(local, "c", enc, [str(tmp_path / "out")], ImportOptions(batch_size=4))
        expected = live_rows(local)
        local_errors = sorted((e.uri, e.reason) for e in local.catalog.job_errors(want.job_id))
    assert set(expected) == set(expected_vectors) and len(local_errors) == 4
    rc, out, err = ray_import(cluster, env, [tmp_path / "out"], tiny_siglip_dir, tmp_path / "ray", pg_url,
                              "--batch", "4", "--actors", "2")
    assert rc == 0, err
    assert "13 added, 0 updated, 0 skipped, 4 errors" in out
    with Store(tmp_path / "ray", db=pg_url) as store:
        assert_same_rows(live_rows(store), expected, ("sha256", "width", "height", "caption", "meta"))
        assert_index_matches_catalog(store.collection("c"))
        [job] = store.catalog.list_jobs(store.collection("c").id)
        assert sorted((e.uri, e.reason) for e in store.catalog.job_errors(job.id)) == local_errors
    row = listed_job(env, tmp_path / "ray", pg_url)
    assert (row["kind"], row["state"], row["engine"], row["added"], row["failed"]) == ("import", "done", "ray", 13, 4)


def test_killed_driver_then_the_same_import_resumes_exactly_once(ray_cluster, tiny_siglip_dir, pg_url,
                                                                  tmp_path):  # noqa: F811
    cluster, env = ray_cluster
    dim = encoders.load(tiny_siglip_dir).dim
    root = tmp_path / "out"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    shards, per_shard = 10, 200
    rng = np.random.default_rng(1)
    for s in range(shards):
        np.save(root / "img_emb" / f"img_emb_{s}.npy", unit(rng, per_shard, dim).astype(np.float16))
        pq.write_table(pa.table({"image_path": [f"/p/{s}/{i}.jpg" for i in range(per_shard)],
                                 "n": pa.array(range(per_shard), pa.int64())}),
                       root / "metadata" / f"metadata_{s}.parquet", row_group_size=50)
    n = shards * per_shard
    args = (cluster, env, [root], tiny_siglip_dir, tmp_path / "d", pg_url, "--batch", "25", "--actors", "2")
    driver = ray_import(*args, wait=False)
    with Store(tmp_path / "watch", db=pg_url) as watcher:
        wait_committed(watcher, driver, 300, time.monotonic() + 180)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate(timeout=60)
        interrupted = committed(watcher)
    assert 300 <= interrupted < n, interrupted

    rc, out, err = ray_import(*args)
    assert rc == 0, err
    assert f"{n - interrupted} added, 0 updated, {interrupted} skipped, 0 errors" in out
    with Store(tmp_path / "d", db=pg_url) as store:
        rows = live_rows(store)  # asserts no uri twice
        assert sorted(rows) == sorted(f"/p/{s}/{i}.jpg" for s in range(shards) for i in range(per_shard))
        coll = store.collection("c")
        assert coll.count() == n
        assert_index_matches_catalog(coll)
        jobs = store.catalog.list_jobs(coll.id)
        assert jobs[0].state == "done" and jobs[0].resumed_from == jobs[1].id
        assert jobs[0].added + jobs[1].added == n


def test_import_refusals_are_one_line(ray_cluster, tiny_siglip_dir, tmp_path, capsys):
    cluster, env = ray_cluster
    dim = encoders.load(tiny_siglip_dir).dim
    np.save(tmp_path / "v.npy", unit(np.random.default_rng(2), 2, dim))
    (tmp_path / "v.csv").write_text("uri\na\nb\n")
    rc, out, err = ray_import(cluster, env, [tmp_path / "v.npy"], tiny_siglip_dir, tmp_path / "d", None)
    assert rc == 2 and "SQLite" in err and "postgresql" in err and len(err.strip().splitlines()) == 1, err
    with Store(tmp_path / "d") as store:
        assert store.collections() == []  # refused before anything was written
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token here
    rc, out, err = ray_import(cluster, no_token, [tmp_path / "v.npy"], tiny_siglip_dir, tmp_path / "d",
                              "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert rc == 2 and "auth token" in err and len(err.strip().splitlines()) == 1, err
    here = ["import", str(tmp_path / "v.npy"), "--collection", "c", "--model", str(tiny_siglip_dir), "--data-dir",
            str(tmp_path / "d")]
    assert cli.main(here + ["--engine", "ray", "--ray-token-file", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"mmsearch import: --ray-token-file {tmp_path / 'nope'}: no such file"
    assert cli.main(here + ["--actors", "2"]) == 2  # without --engine ray
    assert capsys.readouterr().err.strip() == ("mmsearch import: --ray-address, --ray-token-file, --actors go with "
                                               "--engine ray")
    shadow = tmp_path / "no-ray" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")  # as if not installed
    proc = subprocess.run([sys.executable, "-m", "search.cli", "import", str(tmp_path / "v.npy"), "--collection", "c",
                           "--model", str(tiny_siglip_dir), "--data-dir", str(tmp_path / "d"), "--engine", "ray"],
                          cwd=str(ROOT), env=dict(env, PYTHONPATH=os.pathsep.join([str(shadow.parent), str(ROOT)])),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        'mmsearch import: --engine ray needs Ray, which is not installed: pip install -e ".[ray]"'], proc.stderr
