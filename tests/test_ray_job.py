"""`mmsearch index --engine ray` on a real Ray cluster of two nodes (a head and a worker node, on loopback, with
token auth) writing into a real PostgreSQL catalog: the same vectors as the local job, bad files recorded,
SQLite refused over a cluster, and a job whose worker node and driver are killed mid-way, resumed by the same
command, holding every item exactly once (checked item by item against the catalog and the index)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import encoders
from images import random_image
from indexer.catalog import Item
from indexer.jobs import JobOptions, index_paths
from indexer.store import Store
from http_files import Served
from indexer_helpers import assert_index_matches_catalog
from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from ray_cluster import NODE, ROOT


def make_inputs(root: Path, n: int) -> dict[str, str]:
    """n images (PNG and JPEG, several sizes) and two bad files; returns {bad name: reason fragment}."""
    root.mkdir()
    for i in range(n):
        image = random_image(40 + i % 23, 30 + i % 17, seed=i)
        if i % 2:
            image.save(root / f"img{i:03d}.jpg", quality=90)
        else:
            image.save(root / f"img{i:03d}.png")
    buf = io.BytesIO()
    random_image(50, 40, seed=999).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    (root / "letter.jpg").write_text("not a picture")
    return {"truncated.jpg": "corrupt or truncated", "letter.jpg": "not an image"}


def ray_index(cluster, env, folder, model, data_dir, db, *extra, wait=True):
    return ray_cli("index", cluster, env, [folder], model, data_dir, db, *extra, wait=wait)


def ray_cli(command, cluster, env, paths, model, data_dir, db, *extra, wait=True):
    """`mmsearch index|import PATHS... --engine ray` on the cluster into collection "c": (rc, stdout, stderr), or
    the running process (its own process group) when not `wait`."""
    cmd = [sys.executable, "-m", "search.cli", command, *map(str, paths), "--collection", "c", "--model", str(model),
           "--data-dir", str(data_dir), "--engine", "ray", "--ray-address", cluster.address, "--no-progress",
           *(["--db", db] if db else []), *extra]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def live_rows(store: Store) -> dict[str, object]:
    coll = store.collection("c")
    rows = coll.get(store.catalog.select_ids(coll.id)).values()
    by_uri: dict[str, object] = {}
    for row in rows:
        assert row.uri not in by_uri, f"{row.uri} is in the catalog twice"
        by_uri[row.uri] = row
    return by_uri


def assert_same_rows(got: dict, expected: dict, fields: tuple[str, ...]) -> None:
    """The same uris, vectors within 1e-5 and the same `fields` as the single-machine job's rows."""
    assert set(got) == set(expected)
    diff = max(float(np.abs(got[u].vector_array() - expected[u].vector_array()).max()) for u in got)
    assert diff <= 1e-5, diff
    for uri, row in got.items():
        assert [getattr(row, f) for f in fields] == [getattr(expected[uri], f) for f in fields], uri


def listed_job(env: dict, data_dir, db: str) -> dict:
    """The one job `mmsearch jobs --json` lists."""
    listed = subprocess.run([sys.executable, "-m", "search.cli", "jobs", "--data-dir", str(data_dir), "--db", db,
                             "--json", "--errors", "5"], cwd=str(ROOT), env=env, capture_output=True, text=True,
                            timeout=120)
    [row] = json.loads(listed.stdout)
    return row


def committed(store: Store) -> int:
    """Items of collection "c" in the catalog (0 before it exists)."""
    found = store.catalog.find_collection("c")
    return 0 if found is None else store.catalog.count(found.id)


def wait_committed(store: Store, driver: subprocess.Popen, at_least: int, deadline: float) -> int:
    """Wait until collection "c" holds `at_least` items (or the driver ends, or the deadline); their number."""
    while committed(store) < at_least and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return committed(store)


def test_ray_job_equals_the_local_job(ray_cluster, tiny_siglip_dir, pg_url, tmp_path):  # noqa: F811
    cluster, env = ray_cluster
    bad = make_inputs(tmp_path / "in", 24)
    enc = encoders.load(tiny_siglip_dir)
    with Store(tmp_path / "local") as local:
        want = index_paths(local, "c", enc, [str(tmp_path / "in")], JobOptions(workers=0))
        expected = live_rows(local)
        local_errors = {os.path.basename(e.uri): e.reason for e in local.catalog.job_errors(want.job_id)}
    rc, out, err = ray_index(cluster, env, tmp_path / "in", tiny_siglip_dir, tmp_path / "ray", pg_url,
                             "--batch-size", "5", "--commit-every", "7")
    assert rc == 0, err
    assert "24 added, 0 updated, 0 skipped, 2 errors" in out
    with Store(tmp_path / "ray", db=pg_url) as store:
        got = live_rows(store)
        assert_same_rows(got, expected, ("sha256", "width", "height"))
        for row in got.values():
            assert os.path.isfile(os.path.join(store.media_dir, "thumbs", row.sha256[:2], row.sha256 + ".webp"))
        assert_index_matches_catalog(store.collection("c"))
        [job] = store.catalog.list_jobs(store.collection("c").id)
        errors = {os.path.basename(e.uri): e.reason for e in store.catalog.job_errors(job.id)}
    assert errors == local_errors and set(errors) == set(bad)
    for name, fragment in bad.items():
        assert fragment in errors[name]
    row = listed_job(env, tmp_path / "ray", pg_url)
    assert (row["state"], row["engine"], row["added"], row["failed"]) == ("done", "ray", 24, 2)


def test_ray_job_reads_http_uris_like_the_local_job(ray_cluster, tiny_siglip_dir, pg_url, tmp_path):  # noqa: F811
    """A manifest of http:// uris (tests/http_files.py) is read by the cluster's decode tasks: the same items
    as indexing the files from disk, under the remote uris, a 404 recorded."""
    cluster, env = ray_cluster
    make_inputs(tmp_path / "www", 6)
    served = Served(tmp_path / "www")
    try:
        names = sorted(p.name for p in (tmp_path / "www").glob("img*"))
        manifest = tmp_path / "remote.jsonl"
        manifest.write_text("".join(json.dumps({"uri": f"{served.url}/{n}"}) + "\n" for n in names + ["gone.png"]))
        rc, out, err = ray_index(cluster, env, manifest, tiny_siglip_dir, tmp_path / "ray", pg_url, "--batch-size", "4")
    finally:
        served.close()
    assert rc == 0, err
    assert "6 added, 0 updated, 0 skipped, 1 errors" in out
    with Store(tmp_path / "local") as local:
        index_paths(local, "c", encoders.load(tiny_siglip_dir), [str(tmp_path / "www" / n) for n in names],
                    JobOptions(workers=0))
        expected = {os.path.basename(u): row for u, row in live_rows(local).items()}
    with Store(tmp_path / "ray", db=pg_url) as store:
        got = live_rows(store)
        assert set(got) == {f"{served.url}/{n}" for n in names}
        for uri, row in got.items():
            want = expected[uri.rsplit("/", 1)[1]]
            assert (row.sha256, row.width, row.height) == (want.sha256, want.width, want.height)
            assert float(np.abs(row.vector_array() - want.vector_array()).max()) <= 1e-5
        [job] = store.catalog.list_jobs(store.collection("c").id)
        assert [(e.uri, e.reason) for e in store.catalog.job_errors(job.id)] == [
            (f"{served.url}/gone.png", "not found (HTTP 404)")]


def test_sqlite_is_refused_for_a_cluster_and_a_missing_token_is_explained(ray_cluster, tiny_siglip_dir, tmp_path):
    cluster, env = ray_cluster
    make_inputs(tmp_path / "in", 2)
    rc, out, err = ray_index(cluster, env, tmp_path / "in", tiny_siglip_dir, tmp_path / "d", None)
    assert rc == 2 and "SQLite" in err and "postgresql" in err and len(err.strip().splitlines()) == 1, err
    with Store(tmp_path / "d") as store:
        assert store.collections() == []  # refused before anything was written
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token here
    rc, out, err = ray_index(cluster, no_token, tmp_path / "in", tiny_siglip_dir, tmp_path / "d",
                             "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert rc == 2 and "auth token" in err and "ray get-auth-token" in err, err


def test_killed_worker_node_and_driver_then_the_same_command_resumes_exactly_once(ray_cluster, tiny_siglip_dir,
                                                                                 pg_url, tmp_path):  # noqa: F811
    cluster, env = ray_cluster
    n = 160
    make_inputs(tmp_path / "in", n)
    extra = cluster.add_node(**NODE)  # the node that is stopped mid-job
    cluster.wait_for_nodes()
    args = (cluster, env, tmp_path / "in", tiny_siglip_dir, tmp_path / "d", pg_url, "--batch-size", "2",
            "--commit-every", "2")
    driver = ray_index(*args, wait=False)
    with Store(tmp_path / "d2", db=pg_url) as watcher:
        deadline = time.monotonic() + 180
        at_kill = wait_committed(watcher, driver, 10, deadline)
        cluster.remove_node(extra, allow_graceful=False)  # the worker node goes away mid-job
        wait_committed(watcher, driver, at_kill + 6, deadline)
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # and then the driver
        driver.communicate(timeout=60)
        interrupted = committed(watcher)
    assert 10 <= at_kill < n and interrupted < n, (at_kill, interrupted)

    rc, out, err = ray_index(*args)
    assert rc == 0, err
    with Store(tmp_path / "d", db=pg_url) as store:
        coll = store.collection("c")
        rows = live_rows(store)  # asserts no uri twice
        files = sorted(p for p in (tmp_path / "in").iterdir() if p.name.startswith("img"))
        assert sorted(rows) == [str(p) for p in files]
        index = coll.refresh()
        assert sorted(index.ids().tolist()) == sorted(r.id for r in rows.values())
        for path in files:  # item by item: its content, and the index holding its catalog vector
            row = rows[str(path)]
            assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
            np.testing.assert_array_equal(index.index.reconstruct(int(row.id)), row.vector_array())
        assert len(store.catalog.select_ids(coll.id, Item.sha256.in_([r.sha256 for r in rows.values()]))) == n
        jobs = store.catalog.list_jobs(coll.id)
        assert jobs[0].state == "done" and jobs[0].resumed_from == jobs[1].id
        assert jobs[1].state in ("interrupted", "failed"), jobs[1].message
        assert jobs[0].added + jobs[1].added == n


def test_without_ray_the_engine_says_how_to_get_it(tiny_siglip_dir, tmp_path):
    shadow = tmp_path / "no-ray" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")  # as if not installed
    make_inputs(tmp_path / "in", 1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow.parent), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "search.cli", "index", str(tmp_path / "in"), "--collection", "c",
                           "--model", str(tiny_siglip_dir), "--data-dir", str(tmp_path / "d"), "--engine", "ray"],
                          cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        'mmsearch index: --engine ray needs Ray Data, which is not installed: pip install -e ".[ray]"'], proc.stderr
