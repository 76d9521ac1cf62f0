"""Remote inputs (indexer/remote.py through the one ingest path): a manifest of http:// uris served by a real
http.server on loopback is indexed like the same files from disk, under the remote uris; a 404 and a file over
--max-bytes are recorded job errors and the job goes on; a rerun fetches and adds nothing; a missing backend,
a refused connection and a silent server are one-line errors; a server's Upsert never fetches a remote uri."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from http_files import Served
from images import random_image
from parts import unavailable

import encoders
from indexer.catalog import Item
from indexer.ingest import Ingest, SourceItem
from indexer.store import Store
from mmsearch.errors import InvalidInput, NotFound, TooLarge, Unavailable
from search import cli
from search.config import ServerConfig
from search.models import Models
from search.service import Service, UpsertInput

MAX_BYTES = 50_000


@pytest.fixture(scope="module", autouse=True)
def fsspec_http():
    try:
        import aiohttp  # noqa: F401  (fsspec's http file system needs it)
        import fsspec  # noqa: F401
    except ImportError as exc:
        unavailable("remote", f'fsspec / aiohttp not installed (pip install -e ".[remote]"): {exc}')


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    server = Served(folder)
    yield server
    server.close()


def make_images(folder, n=6):
    names = []
    for i in range(n):
        name = f"img{i}.png"
        random_image(40 + 3 * i, 30 + 2 * i, "RGB", seed=i).save(folder / name)
        assert (folder / name).stat().st_size < MAX_BYTES
        names.append(name)
    return names


def test_http_manifest_is_indexed_like_the_files_on_disk(served, tiny_siglip_dir, tmp_path, capsys):
    names = make_images(served.folder)
    random_image(200, 200, "RGB", seed=99).save(served.folder / "big.png")
    assert (served.folder / "big.png").stat().st_size > MAX_BYTES
    manifest = tmp_path / "remote.jsonl"
    rows = [{"uri": f"{served.url}/{name}", "n": i} for i, name in enumerate(names)]
    rows[2:2] = [{"uri": f"{served.url}/missing.png", "n": -1}, {"uri": f"{served.url}/big.png", "n": -2}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = ["--data-dir", str(tmp_path / "d"), "--max-bytes", str(MAX_BYTES), "--no-progress"]
    args = ["index", str(manifest), "--collection", "web", "--model", str(tiny_siglip_dir), "--workers", "1", *data]
    assert cli.main(args) == 0
    assert "job 1: 6 added, 0 updated, 0 skipped, 2 errors" in capsys.readouterr().out
    assert cli.main(["index", str(served.folder), "--collection", "disk", "--model", str(tiny_siglip_dir),
                     "--workers", "0", *data]) == 0
    assert "job 2: 6 added, 0 updated, 0 skipped, 1 errors" in capsys.readouterr().out  # big.png, on disk too

    with Store(tmp_path / "d") as store:
        web, disk = store.collection("web"), store.collection("disk")
        for i, name in enumerate(names):
            [wid] = store.catalog.select_ids(web.id, Item.uri == f"{served.url}/{name}").tolist()
            [did] = store.catalog.select_ids(disk.id, Item.uri == str(served.folder / name)).tolist()
            w, d = web.get([wid])[wid], disk.get([did])[did]
            assert (w.sha256, w.width, w.height, w.meta) == (d.sha256, d.width, d.height, {"n": i})
            np.testing.assert_allclose(w.vector_array(), d.vector_array(), atol=1e-5)
        reasons = {e.uri: e.reason for e in store.catalog.job_errors(1)}
    assert reasons == {f"{served.url}/missing.png": "not found (HTTP 404)",
                       f"{served.url}/big.png": "larger than the 50000-byte limit"}

    fetched = len(served.requests)
    assert cli.main(args) == 0  # the known uris are skipped before anything is fetched
    assert "job 3: 0 added, 0 updated, 6 skipped, 2 errors" in capsys.readouterr().out
    assert sorted(served.requests[fetched:]) == ["/big.png", "/missing.png"]


def test_a_remote_path_argument_is_one_image(served, tiny_siglip_dir, tmp_path, capsys):
    [name] = make_images(served.folder, n=1)
    assert cli.main(["index", f"{served.url}/{name}", "--collection", "one", "--model", str(tiny_siglip_dir),
                     "--workers", "0", "--no-progress", "--data-dir", str(tmp_path / "d")]) == 0
    assert "1 added" in capsys.readouterr().out
    with Store(tmp_path / "d") as store:
        coll = store.collection("one")
        assert [r.uri for r in coll.get(store.catalog.select_ids(coll.id)).values()] == [f"{served.url}/{name}"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_failures_are_one_line_errors(served, tmp_path):
    job = Ingest(max_bytes=MAX_BYTES, max_pixels=None, remote_timeout_s=0.5)
    with pytest.raises(NotFound, match=r"missing.png: not found \(HTTP 404\)$"):
        job.read(SourceItem(uri=f"{served.url}/missing.png", path=f"{served.url}/missing.png"))
    port = closed_port()
    with pytest.raises(Unavailable, match=r"cannot connect \(connection refused\)$"):
        job.read(SourceItem(uri=f"http://127.0.0.1:{port}/a.png", path=f"http://127.0.0.1:{port}/a.png"))
    with pytest.raises(InvalidInput, match=r"no fsspec file system reads nosuchproto:// uris$"):
        job.read(SourceItem(uri="nosuchproto://x/a.png", path="nosuchproto://x/a.png"))
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidInput, match=r"s3://bucket/a.png: install s3fs to read s3:// uris$"):
            job.read(SourceItem(uri="s3://bucket/a.png", path="s3://bucket/a.png"))
    with pytest.raises(TooLarge):
        (served.folder / "big.bin").write_bytes(bytes(MAX_BYTES + 1))
        job.read(SourceItem(uri=f"{served.url}/big.bin", path=f"{served.url}/big.bin"))
    (served.folder / "ok.bin").write_bytes(bytes(MAX_BYTES))  # exactly the limit is fine
    assert len(job.read(SourceItem(uri=f"{served.url}/ok.bin", path=f"{served.url}/ok.bin")).data) == MAX_BYTES

    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/a.png"
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match=r"no answer within 0.5 s$"):
            job.read(SourceItem(uri=url, path=url))
        assert time.monotonic() - t0 < 10
    finally:
        silent.close()


def test_a_server_never_fetches_a_remote_uri(served, tiny_siglip_dir, tmp_path):
    [name] = make_images(served.folder, n=1)
    (tmp_path / "roots").mkdir()
    enc = encoders.load(tiny_siglip_dir)
    with Store(tmp_path / "data") as store:
        service = Service(store, Models(batching=False),
                          ServerConfig(data_dir=str(tmp_path / "data"), image_roots=[str(tmp_path / "roots")]))
        store.create_collection("c", enc)
        done = service.upsert(iter([("c", UpsertInput(uri=f"{served.url}/{name}")),
                                    ("", UpsertInput(uri=f"{served.url}/{name}".replace("http", "s3", 1)))]),
                              deadline=time.monotonic() + 60)
    assert done.upserted == 0
    for status in done.statuses:
        assert not status.ok and status.status == "INVALID_ARGUMENT"
        assert "this server does not fetch remote uris" in status.error and "send the image bytes" in status.error
    assert served.requests == []
