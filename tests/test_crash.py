"""Crash consistency: SIGKILL an indexing process at random points (mid-commit, mid index save, mid decode),
resume, and check that the catalog and the index agree, nothing is duplicated and nothing is lost."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import encoders
from encoders.preprocess import load_image
from images import random_image
from indexer.store import Store
from indexer.ann import VectorIndex
from indexer_helpers import assert_index_matches_catalog

N_IMAGES = 48
ROOT = Path(__file__).resolve().parents[1]

JOB = """
import sys
import encoders
from indexer.jobs import JobOptions, index_paths
from indexer.store import Store
enc = encoders.load(sys.argv[1])
with Store(sys.argv[2]) as store:
    print("ready", flush=True)
    index_paths(store, "c", enc, [sys.argv[3]], JobOptions(workers=1, batch_size=2, commit_every=3, save_every_s=0))
"""


def _live_count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM items WHERE deleted = 0").fetchone()[0]
    except sqlite3.Error:
        return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_at_random_points_then_resume(tiny_siglip_dir, tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for i in range(N_IMAGES):
        random_image(24 + i % 7, 20 + i % 5, seed=i).save(src / f"{i:03d}.png")
    data = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", JOB, str(tiny_siglip_dir), str(data), str(src)]
    rng = np.random.default_rng(1234)
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "ready"
        before = _live_count(data / "catalog.db")
        target = before + int(rng.integers(0, 12))
        deadline = time.monotonic() + 60
        while proc.poll() is None and _live_count(data / "catalog.db") < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.05)))  # land anywhere: decode, encode, commit, index save
        workers = _children(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # the decode workers notice their parent is gone and exit on their own
        end = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < end:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "decode workers outlived the killed job"
        if _live_count(data / "catalog.db") >= N_IMAGES or kills == 3:
            break
    assert kills >= 2, "the job finished before it could be killed enough times"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    enc = encoders.load(tiny_siglip_dir)
    with Store(data) as store:
        coll = store.collection("c")
        ids = store.catalog.select_ids(coll.id)
        rows = coll.get(ids)
        uris = sorted(r.uri for r in rows.values())
        assert uris == sorted(str(p) for p in src.iterdir())  # nothing lost, nothing twice
        assert len({r.sha256 for r in rows.values()}) == N_IMAGES
        for r in list(rows.values())[:: 7]:
            assert r.sha256 == hashlib.sha256(Path(r.uri).read_bytes()).hexdigest()
            want = enc.encode_images([load_image(r.uri)])[0]
            np.testing.assert_allclose(r.vector_array(), want, atol=1e-5)
        assert_index_matches_catalog(coll)
        jobs = store.catalog.list_jobs(coll.id, limit=100)
        assert jobs[0].state == "done" and jobs[0].resumed_from is not None
        assert sum(j.added for j in jobs) == N_IMAGES  # each image was committed exactly once
        # the file on disk (written by the last run) is readable and covers the catalog
        index, meta = VectorIndex.load(store.index_path("c"))
        assert meta["watermark"] == store.catalog.revision(coll.id)[0]
        assert np.array_equal(index.ids(), np.sort(ids))
    assert not [f for f in os.listdir(data / "indices") if f.endswith(".tmp") and
                time.time() - os.path.getmtime(data / "indices" / f) > 3600]


def test_ctrl_c_marks_the_job_interrupted_and_a_rerun_resumes(tiny_siglip_dir, tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for i in range(40):
        random_image(30, 26, seed=100 + i).save(src / f"{i:03d}.png")
    data = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "search.cli", "index", str(src), "--collection", "c", "--model",
           str(tiny_siglip_dir), "--data-dir", str(data), "--workers", "1", "--batch-size", "2",
           "--commit-every", "4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and _live_count(data / "catalog.db") < 8 and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the signal landed: nothing to check about interruption
        return
    assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err[-500:])
    assert not any(_alive(w) for w in workers)
    with Store(data) as store:
        [job] = store.catalog.list_jobs()
        assert job.state == "interrupted" and 8 <= job.added < 40
        assert_index_matches_catalog(store.collection("c"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"{40 - job.added} added" in done.stdout, done.stdout + done.stderr
    with Store(data) as store:
        assert store.collection("c").count() == 40
        assert store.catalog.list_jobs()[0].resumed_from == job.id
