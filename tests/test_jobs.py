"""Bulk indexing jobs: folders, manifests, Python objects, resume, --update, dedupe, captions, the CLI."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import encoders
from mmsearch.errors import Conflict, InvalidInput, NothingIndexed
from encoders.preprocess import load_image
from images import random_image
from indexer.catalog import Item
from indexer.jobs import JobOptions, index_objects, index_paths
from indexer.store import Store
from indexer_helpers import assert_index_matches_catalog
from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from search import cli


@pytest.fixture(scope="module")
def enc(tiny_siglip_dir):
    return encoders.load(tiny_siglip_dir)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "data") as st:
        yield st


def make_folder(root, n=12, start=0):
    os.makedirs(root / "sub" / "deeper", exist_ok=True)
    paths = []
    for i in range(start, start + n):
        folder = root if i % 3 == 0 else root / "sub" if i % 3 == 1 else root / "sub" / "deeper"
        ext = ["png", "jpg", "webp"][i % 3]
        path = folder / f"img{i:03d}.{ext}"
        random_image(40 + i, 30 + 2 * i, "RGB", seed=i).save(path, quality=95) if ext != "png" else \
            random_image(40 + i, 30 + 2 * i, "RGB", seed=i).save(path)
        paths.append(path)
    return paths


def expected_vector(enc, path) -> np.ndarray:
    pre = enc.image_preprocessor
    return enc.encode_images([load_image(str(path), draft_size=pre.draft_size)])[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_index_folder_then_rerun_adds_nothing(store, enc, tmp_path, workers):
    paths = make_folder(tmp_path / "photos")
    (tmp_path / "photos" / "notes.txt").write_text("not an image and not named like one")
    extless = tmp_path / "photos" / "sub" / "IMG_0042"  # found by content, no extension
    random_image(33, 33, seed=99).save(extless, format="PNG")
    opts = JobOptions(workers=workers, batch_size=4, commit_every=5)
    r = index_paths(store, "photos", enc, [str(tmp_path / "photos")], opts)
    assert (r.state, r.added, r.failed, r.skipped, r.seen) == ("done", 13, 0, 0, 13)
    coll = store.collection("photos")
    assert coll.count() == 13
    assert_index_matches_catalog(coll)
    for path in paths[:4] + [extless]:
        [item] = store.catalog.select_ids(coll.id, Item.uri == str(path))[:1].tolist() or [None]
        row = coll.get([item])[item]
        np.testing.assert_allclose(row.vector_array(), expected_vector(enc, path), atol=1e-5)
        with load_image(str(path)) as im:
            assert (row.width, row.height) == im.size
        assert len(row.sha256) == 64
    # searching with an image's own vector finds it first
    hit = coll.search(expected_vector(enc, paths[5]), k=1)[0][0]
    assert coll.get([hit.id])[hit.id].uri == str(paths[5])

    r2 = index_paths(store, "photos", enc, [str(tmp_path / "photos")], opts)
    assert (r2.added, r2.skipped, r2.failed) == (0, 13, 0)
    assert coll.count() == 13
    jobs = store.catalog.list_jobs(coll.id)
    assert [j.state for j in jobs] == ["done", "done"] and jobs[1].added == 13 and jobs[0].skipped == 13


def test_same_content_twice_is_one_item_and_update_reembeds(store, enc, tmp_path):
    root = tmp_path / "in"
    paths = make_folder(root, n=4)
    shutil.copy(paths[0], root / "zz_copy_of_first.png")
    r = index_paths(store, "c", enc, [str(root)], JobOptions(workers=0))
    assert (r.added, r.skipped) == (4, 1)
    coll = store.collection("c")
    [first_id] = store.catalog.select_ids(coll.id, Item.uri == str(paths[0])).tolist()
    old = coll.get([first_id])[first_id]

    random_image(50, 50, seed=1234).save(paths[0])  # the file changes in place
    r = index_paths(store, "c", enc, [str(root)], JobOptions(workers=0))
    assert (r.added, r.updated) == (0, 0)  # without --update known uris are not even read
    r = index_paths(store, "c", enc, [str(root)], JobOptions(workers=0, update=True))
    assert (r.added, r.updated, r.skipped) == (0, 1, 4)
    new = coll.get([first_id])[first_id]
    assert new.sha256 != old.sha256 and (new.width, new.height) == (50, 50) and new.updated >= old.updated
    np.testing.assert_allclose(new.vector_array(), expected_vector(enc, paths[0]), atol=1e-5)
    assert coll.search(new.vector_array(), k=1)[0][0].id == first_id
    assert_index_matches_catalog(coll)


def test_manifests_csv_and_jsonl(store, enc, tmp_path):
    paths = make_folder(tmp_path / "imgs", n=6)
    csv_path = tmp_path / "list.csv"
    rows = ["uri,label,score,code,empty"]
    for i, p in enumerate(paths[:3]):
        rows.append(f"{os.path.relpath(p, tmp_path)},cat{i},{i}.5,007,")
    rows.append("imgs/missing.png,x,1,1,")
    rows.append("nosuchproto://example.com/a.jpg,x,1,1,")  # remote uris are read through fsspec (test_remote.py)
    csv_path.write_text("\n".join(rows) + "\n")
    jsonl = tmp_path / "list.jsonl"
    lines = [json.dumps({"path": str(p), "tags": ["a", "b"], "n": i, "ok": True}) for i, p in enumerate(paths[3:])]
    lines.insert(1, "{broken json")
    jsonl.write_text("\n".join(lines) + "\n")
    r = index_paths(store, "m", enc, [str(csv_path), str(jsonl)], JobOptions(workers=0))
    assert (r.added, r.failed) == (6, 3)
    coll = store.collection("m")
    metas = {row.uri: row.meta for row in coll.get(store.catalog.select_ids(coll.id)).values()}
    assert metas[str(paths[1])] == {"label": "cat1", "score": 1.5, "code": "007"}
    assert metas[str(paths[4])] == {"tags": ["a", "b"], "n": 1, "ok": True}
    reasons = sorted(e.reason for e in store.catalog.job_errors(r.job_id))
    assert reasons[0].startswith("manifest line is not JSON")
    assert any("no such file" in x for x in reasons) and any("nosuchproto:// uris" in x for x in reasons)
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\na.jpg,x\n")
    with pytest.raises(InvalidInput, match="no uri column"):
        index_paths(store, "m", enc, [str(bad)])
    with pytest.raises(InvalidInput, match="no such file or folder"):
        index_paths(store, "m", enc, [str(tmp_path / "nowhere")])


def test_python_api_bytes_and_paths(store, enc, tmp_path):
    import io

    buf = io.BytesIO()
    random_image(30, 20, seed=5).save(buf, format="PNG")
    path = tmp_path / "one.png"
    random_image(25, 25, seed=6).save(path)
    objects = [(buf.getvalue(), {"source": "memory"}), (str(path), {"source": "disk"}),
               (b"definitely not an image", {}), (12345, {}), (buf.getvalue(), {"uri": "dup-of-first"}),
               (str(path), {"bad": float("nan")})]
    r = index_objects(store, "api", enc, objects, JobOptions(workers=0))
    assert (r.added, r.skipped, r.failed) == (2, 1, 3)
    coll = store.collection("api")
    uris = sorted(row.uri for row in coll.get(store.catalog.select_ids(coll.id)).values())
    assert uris[0] == str(path) and uris[1].startswith("sha256:")
    from indexer_helpers import FakeBinding

    with pytest.raises(Conflict, match="bound to encoder"):  # another encoder's vectors never enter it
        index_objects(store, "api", FakeBinding(dim=32), objects)


def test_nothing_indexed_is_an_error(store, enc, tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"nope")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(NothingIndexed, match="nothing could be indexed: 2 inputs failed"):
        index_paths(store, "x", enc, [str(tmp_path)], JobOptions(workers=0))
    job = store.catalog.list_jobs()[0]
    assert (job.failed, job.state) == (2, "failed") and job.message.startswith("nothing could be indexed")


def test_captions_at_index_time(store, enc, tmp_path, tmp_path_factory):
    from tiny_blip import make_tiny_blip

    cap_dir, _ = make_tiny_blip(tmp_path_factory.mktemp("blipcap") / "model", "captioning")
    captioner = encoders.load_captioner(cap_dir)
    paths = make_folder(tmp_path / "c", n=3)
    r = index_paths(store, "cap", enc, [str(tmp_path / "c")], JobOptions(workers=1), captioner=captioner)
    assert r.added == 3
    coll = store.collection("cap")
    rows = {row.uri: row for row in coll.get(store.catalog.select_ids(coll.id)).values()}
    for p in paths:
        image = load_image(str(p), draft_size=enc.image_preprocessor.draft_size)
        assert rows[str(p)].caption == captioner.caption([image])[0]


def test_cli_index_jobs_delete_rebuild(enc, tiny_siglip_dir, tmp_path, capsys):
    make_folder(tmp_path / "p", n=6)
    (tmp_path / "p" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    data = ["--data-dir", str(tmp_path / "d")]
    assert cli.main(["index", str(tmp_path / "p"), "--collection", "c", "--model", str(tiny_siglip_dir),
                     "--workers", "1", *data]) == 0
    out = capsys.readouterr().out
    assert "job 1: 6 added, 0 updated, 0 skipped, 1 errors" in out
    assert cli.main(["index", str(tmp_path / "p"), "--collection", "c", *data]) == 0  # model from the collection
    assert "0 added" in capsys.readouterr().out
    assert cli.main(["jobs", "--job", "1", "--json", *data]) == 0
    [job] = json.loads(capsys.readouterr().out)
    assert job["state"] == "done" and job["errors"][0]["uri"].endswith("broken.jpg")
    assert "corrupt or truncated" in job["errors"][0]["reason"]
    assert cli.main(["jobs", "--errors", "5", *data]) == 0
    assert "broken.jpg" in capsys.readouterr().out
    assert cli.main(["delete", "--collection", "c", "--uri", str(tmp_path / "p" / "img000.png"), *data]) == 0
    assert "deleted 1 item" in capsys.readouterr().out
    assert cli.main(["delete", "--collection", "c", "--filter", "width >= 44", *data]) == 0
    assert "deleted 2 items" in capsys.readouterr().out
    assert cli.main(["rebuild", "--collection", "c", "--index", "hnsw", *data]) == 0
    assert "hnsw32 index, 3 items" in capsys.readouterr().out
    assert cli.main(["delete", "--collection", "c", "--filter", "meta.x = ", *data]) == 2
    assert cli.main(["rebuild", "--collection", "nope", *data]) == 3
    assert cli.main(["index", str(tmp_path / "p"), "--collection", "new", *data]) == 2  # new needs --model
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"")
    assert cli.main(["index", str(tmp_path / "bad"), "--collection", "c", *data]) == 8
    err = capsys.readouterr().err
    assert "nothing could be indexed" in err


def test_job_on_postgres(enc, pg_url, tmp_path):  # noqa: F811
    make_folder(tmp_path / "p", n=5)
    with Store(tmp_path / "d", db=pg_url) as store:
        r = index_paths(store, "pg", enc, [str(tmp_path / "p")], JobOptions(workers=1, commit_every=2))
        assert r.added == 5
        r = index_paths(store, "pg", enc, [str(tmp_path / "p")], JobOptions(workers=1, commit_every=2))
        assert (r.added, r.skipped, r.seen) == (0, 5, 5), r
        assert_index_matches_catalog(store.collection("pg"))
