"""The one ingest path (indexer/ingest.py): the bulk job and Upsert make the same record of the same item, and
both write thumbnails at index time."""

from __future__ import annotations

import io
import os
import time

import pytest
from PIL import Image

import encoders
from images import random_image
from indexer.ingest import Ingest, SourceItem
from indexer.jobs import JobOptions, index_paths, job_ingest
from indexer.store import Store
from indexer.thumbnails import THUMB_SIZE, thumbnail_path
from mmsearch.errors import InvalidInput, NotFound, TooLarge
from search.config import ServerConfig
from search.models import Models
from search.service import Service, UpsertInput


@pytest.fixture(scope="module")
def enc(tiny_siglip_dir):
    return encoders.load(tiny_siglip_dir)


def jpeg(width: int, height: int, seed: int) -> bytes:
    buf = io.BytesIO()
    random_image(width, height, seed=seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_the_job_and_upsert_make_the_same_record_of_an_item(enc, tmp_path):
    data = jpeg(640, 480, seed=1)
    (tmp_path / "a.jpg").write_bytes(data)
    job = job_ingest(enc, JobOptions())(SourceItem(uri=str(tmp_path / "a.jpg"), path=str(tmp_path / "a.jpg"),
                                                   meta={"k": 1}))
    server = Ingest(max_bytes=1 << 20, max_pixels=10**8, roots=[str(tmp_path)])
    by_path = server(SourceItem(uri="file://" + str(tmp_path / "a.jpg"), meta={"k": 1}))
    by_bytes = server(SourceItem(uri="", data=data, meta={"k": 1}))
    for record in (by_path, by_bytes):
        assert (record.sha256, record.width, record.height, record.meta) == (job.sha256, 640, 480, {"k": 1})
    assert by_path.uri == job.uri == str(tmp_path / "a.jpg") and by_bytes.uri == f"sha256:{job.sha256}"
    assert job.pixels.shape == (3, 32, 32) and by_path.pixels is None
    # the tiny model draft-decodes this JPEG at 1/8 scale; its thumbnail is still made at THUMB_SIZE
    for record in (job, by_path):
        thumb = Image.open(io.BytesIO(record.thumbnail))
        assert thumb.format == "WEBP" and max(thumb.size) == THUMB_SIZE


def test_what_a_server_may_not_read_is_refused_the_same_way(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out.png").write_bytes(b"x")
    server = Ingest(max_bytes=100, max_pixels=10**8, roots=[str(tmp_path / "in")])
    with pytest.raises(InvalidInput, match="outside the folders this server may read"):
        server.read(SourceItem(uri=str(tmp_path / "out.png")))
    with pytest.raises(NotFound, match="no such file"):
        server.read(SourceItem(uri=str(tmp_path / "in" / "nope.png")))
    with pytest.raises(InvalidInput, match="reads no files by uri"):
        Ingest(max_bytes=100, max_pixels=None, roots=[]).read(SourceItem(uri=str(tmp_path / "out.png")))
    with pytest.raises(TooLarge, match="over the 100-byte limit"):
        server.read(SourceItem(uri="", data=bytes(101)))
    with pytest.raises(InvalidInput, match="bytes or a uri"):
        server.read(SourceItem(uri=""))
    with pytest.raises(InvalidInput, match="metadata key"):
        server.read(SourceItem(uri="", data=b"x", meta={"": 1}))


def test_bulk_jobs_write_thumbnails_at_index_time(enc, tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(5):
        (tmp_path / "in" / f"{i}.jpg").write_bytes(jpeg(300 + 40 * i, 200, seed=i))
    with Store(tmp_path / "data") as store:
        r = index_paths(store, "c", enc, [str(tmp_path / "in")], JobOptions(workers=1, commit_every=2))
        assert r.added == 5
        coll = store.collection("c")
        for row in coll.get(store.catalog.select_ids(coll.id)).values():
            with Image.open(thumbnail_path(store.media_dir, row.sha256)) as thumb:
                assert thumb.format == "WEBP" and max(thumb.size) == THUMB_SIZE
        with Store(tmp_path / "plain") as plain:
            index_paths(plain, "c", enc, [str(tmp_path / "in")], JobOptions(workers=0, thumbnails=False))
            assert not os.path.exists(os.path.join(plain.media_dir, "thumbs"))


def test_upsert_writes_thumbnails_at_index_time(enc, tiny_siglip_dir, tmp_path):
    (tmp_path / "roots").mkdir()
    (tmp_path / "roots" / "f.jpg").write_bytes(jpeg(120, 90, seed=7))
    with Store(tmp_path / "data") as store:
        service = Service(store, Models(batching=False),
                          ServerConfig(data_dir=str(tmp_path / "data"), image_roots=[str(tmp_path / "roots")]))
        store.create_collection("c", enc)
        done = service.upsert(iter([("c", UpsertInput(image=jpeg(64, 48, seed=8), uri="up.jpg", caption="hi")),
                                    ("", UpsertInput(uri=str(tmp_path / "roots" / "f.jpg")))]),
                              deadline=time.monotonic() + 60)
        assert done.upserted == 2, done.statuses
        rows = store.collection("c").get([s.id for s in done.statuses])
        assert sorted((r.uri, r.width, r.height, r.caption) for r in rows.values()) == [
            (str(tmp_path / "roots" / "f.jpg"), 120, 90, None), ("up.jpg", 64, 48, "hi")]
        for row in rows.values():
            with Image.open(thumbnail_path(store.media_dir, row.sha256)) as thumb:
                assert thumb.size == (row.width, row.height)  # small originals are never enlarged
