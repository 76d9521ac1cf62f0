"""The JSON API beside gRPC, on one server process with tiny checkpoints: every route answers what the gRPC
RPC answers, with the same limits, errors (HTTP status + JSON message), bearer token and default deadline;
paging on both transports; thumbnails and originals by item id only; /metrics; readiness on SIGTERM."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from mmsearch import errors
from search.client import SearchClient
from search.config import ServerConfig
from search.server import start
from search_helpers import item_meta, png_bytes

TOKEN = "http-s3cret"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_siglip_dir, tiny_blip_dirs):
    root = tmp_path_factory.mktemp("http")
    files = root / "files"
    files.mkdir()
    config = ServerConfig(address="127.0.0.1:0", http="127.0.0.1:0", data_dir=str(root / "data"), token=TOKEN,
                          max_message_mb=1, image_roots=[str(files)], health_grace_s=0, batch_wait_ms=1,
                          allow_models=[str(tiny_siglip_dir), *map(str, tiny_blip_dirs)])
    srv = start(config)
    srv.files, srv.model, srv.itm = files, str(tiny_siglip_dir), str(tiny_blip_dirs[0])
    srv.url = f"http://127.0.0.1:{srv.http_port}"
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def http(server):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"

    def call(method: str, path: str, **kwargs) -> requests.Response:
        return session.request(method, server.url + path, timeout=60, **kwargs)
    return call


@pytest.fixture(scope="module")
def grpc_client(server):
    with SearchClient(f"127.0.0.1:{server.port}", token=TOKEN, retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def photos(grpc_client, server):
    """24 items: 16 uploaded as bytes (kept copies), 8 upserted by path from the image root; {seed: id}."""
    grpc_client.create_collection("photos", model=server.model)
    items = [{"image": png_bytes(i, 32 + i, 30), "uri": f"photo-{i}.png", "metadata": item_meta(i)} for i in range(16)]
    for i in range(16, 24):
        path = server.files / f"file-{i}.png"
        path.write_bytes(png_bytes(i, 30 + i, 28))
        items.append({"uri": str(path), "metadata": item_meta(i)})
    response = grpc_client.upsert("photos", items)
    assert response.upserted == 24, response
    return {i: s.id for i, s in enumerate(response.statuses)}


def error_of(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "status", "message"}, body
    assert body["error"]["code"] == response.status_code
    return response.status_code, body["error"]["status"], body["error"]["message"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- auth and the open routes ------------------------------------------------------------------------------

def test_api_routes_need_the_token_and_operations_stay_open(server, photos):
    for headers, words in (({}, "missing authorization"), ({"Authorization": "Bearer nope"}, "wrong bearer"),
                           ({"Authorization": TOKEN}, "wrong bearer")):
        for method, path, body in (("POST", "/api/v1/collections/photos/search", {"text": "x"}),
                                   ("GET", "/api/v1/collections", None), ("POST", "/api/v1/embed", {"texts": ["x"]}),
                                   ("GET", f"/api/v1/collections/photos/items/{photos[0]}", None),
                                   ("GET", f"/api/v1/collections/photos/items/{photos[0]}/thumbnail", None),
                                   ("GET", f"/api/v1/collections/photos/items/{photos[0]}/image", None)):
            r = requests.request(method, server.url + path, json=body, headers=headers, timeout=30)
            assert error_of(r)[:2] == (401, "UNAUTHENTICATED") and words in r.json()["error"]["message"], (path, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer"
    for path, kind in (("/healthz", "json"), ("/readyz", "json"), ("/metrics", "text/plain"), ("/docs", "text/html"),
                       ("/openapi.json", "json"), ("/", "text/html"), ("/static/app.js", "javascript")):
        r = requests.get(server.url + path, timeout=30)
        assert r.status_code == 200 and kind in r.headers["content-type"], path


def test_docs_are_served_without_the_internet(server):
    page = requests.get(server.url + "/docs", timeout=30).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/") for a in assets), assets  # nothing from a CDN
    for asset in assets:
        assert requests.get(server.url + asset, timeout=30).status_code == 200, asset
    spec = requests.get(server.url + "/openapi.json", timeout=30).json()
    assert {"/api/v1/collections/{collection}/search", "/api/v1/embed", "/api/v1/collections/{collection}/items",
            "/api/v1/collections"} <= set(spec["paths"])
    assert "HTTPBearer" in json.dumps(spec["components"]["securitySchemes"])


# ---- search: the same answers as gRPC ----------------------------------------------------------------------

def test_text_search_matches_grpc(http, grpc_client, photos):
    body = {"text": "a red circle", "top_k": 5, "filter": 'meta.color = "red" OR meta.i < 4', "include_metadata": True,
            "include_caption": True, "include_vector": True}
    r = http("POST", "/api/v1/collections/photos/search", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    want = grpc_client.search("photos", text="a red circle", top_k=5, filter=body["filter"], include_metadata=True,
                              include_caption=True, include_vector=True)
    assert [h["id"] for h in got["hits"]] == [h.id for h in want.hits]
    assert [h["score"] for h in got["hits"]] == pytest.approx([h.score for h in want.hits], abs=1e-6)
    assert got["filter_strategy"] == want.filter_strategy == "id_selector"
    first = got["hits"][0]
    assert first["metadata"] == item_meta([i for i, v in photos.items() if v == first["id"]][0])
    assert len(first["vector"]) == 32 and first["caption"] == "" and first["rerank_score"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", first["sha256"])
    assert first["thumbnail"].startswith(f"/api/v1/collections/photos/items/{first['id']}/thumbnail?v=")
    assert set(got["timing"]) >= {"encode_ms", "filter_ms", "ann_ms", "fetch_ms", "rerank_ms", "total_ms"}
    assert got["offset"] == 0 and got["next_offset"] == 5


def test_image_vector_and_item_queries(http, grpc_client, photos):
    image = png_bytes(9, 41, 30)
    want = [h.id for h in grpc_client.search("photos", image=image, top_k=3).hits]
    for value in (b64(image), "data:image/png;base64," + b64(image)):
        r = http("POST", "/api/v1/collections/photos/search", json={"image": value, "top_k": 3})
        assert [h["id"] for h in r.json()["hits"]] == want == [photos[9], *want[1:]]
    r = http("POST", "/api/v1/collections/photos/search/upload", files={"image": ("q.png", image, "image/png")},
             data={"top_k": "3", "include_metadata": "true", "filter": "meta.i >= 0"})
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["hits"]] == want and "metadata" in r.json()["hits"][0]
    vector = http("GET", f"/api/v1/collections/photos/items/{photos[9]}?include_vector=true").json()["vector"]
    r = http("POST", "/api/v1/collections/photos/search", json={"vector": vector, "top_k": 3})
    assert [h["id"] for h in r.json()["hits"]] == want
    r = http("POST", "/api/v1/collections/photos/search", json={"item_id": photos[9], "top_k": 2})
    assert [h["id"] for h in r.json()["hits"]] == want[1:3]


def test_rerank_over_http_gives_itm_probabilities(http, server, photos):
    r = http("POST", "/api/v1/collections/photos/search",
             json={"text": "a photo", "top_k": 4, "rerank": {"model": server.itm, "depth": 8}})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 4 and all(0 <= h["rerank_score"] <= 1 for h in hits)
    assert [h["rerank_score"] for h in hits] == sorted((h["rerank_score"] for h in hits), reverse=True)
    assert http("GET", "/api/v1/settings").json()["rerankers"] == [server.itm]  # the captioner is not offered


def test_pages_are_slices_of_one_ranked_list_on_both_transports(http, grpc_client, photos):
    whole = grpc_client.search("photos", text="colours", top_k=24, include_metadata=True)
    assert whole.next_offset == 0 and len(whole.hits) == 24
    ids = [h.id for h in whole.hits]
    seen_grpc, seen_http, offset, pages = [], [], 0, 0
    while True:
        page = grpc_client.search("photos", text="colours", top_k=7, offset=offset)
        seen_grpc += [h.id for h in page.hits]
        got = http("POST", "/api/v1/collections/photos/search", json={"text": "colours", "top_k": 7, "offset": offset})
        seen_http += [h["id"] for h in got.json()["hits"]]
        assert got.json()["offset"] == offset
        assert (got.json()["next_offset"] or 0) == page.next_offset
        pages += 1
        if not page.next_offset:
            break
        offset = page.next_offset
    assert seen_grpc == seen_http == ids and pages == 4  # 7 + 7 + 7 + 3
    # with a filter and an item query: pages are slices of the same list
    for kwargs in (dict(text="colours", filter="meta.even = true"), dict(item_id=photos[3])):
        full = [h.id for h in grpc_client.search("photos", top_k=10, **kwargs).hits]
        paged = [h.id for o in (0, 4, 8) for h in grpc_client.search("photos", top_k=4, offset=o, **kwargs).hits]
        assert paged[:10] == full, kwargs
    # reranked: the head is the first-stage top `depth` in ITM order, then the first-stage order; a page past
    # the head runs no ITM
    itm = http("GET", "/api/v1/settings").json()["rerankers"][0]
    pages = [grpc_client.search("photos", text="colours", top_k=4, offset=o, rerank_model=itm, rerank_depth=6)
             for o in (0, 4, 8, 12)]
    ranked = [h.id for p in pages for h in p.hits]
    assert sorted(ranked[:6]) == sorted(ids[:6]) and ranked[6:] == ids[6:16]
    head = [h.rerank_score for p in pages[:2] for h in p.hits][:6]
    assert head == sorted(head, reverse=True)
    assert [p.timing.rerank_ms > 0 for p in pages] == [True, True, False, False]
    assert not any(h.HasField("rerank_score") for p in pages[2:] for h in p.hits)


def test_paging_limits(http, grpc_client, photos):
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "x", "top_k": 10, "offset": 9991})
    assert error_of(r)[:2] == (400, "INVALID_ARGUMENT") and "offset + top_k must be at most 10000" in r.text
    with pytest.raises(grpc.RpcError) as info:
        grpc_client.search("photos", text="x", top_k=10, offset=9991)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "offset + top_k" in info.value.details()
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "x", "offset": -1})
    assert error_of(r)[0] == 400 and "offset must be >= 0" in r.text
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "x", "top_k": 5, "offset": 40})
    assert r.json()["hits"] == [] and r.json()["next_offset"] is None


def test_min_score_cuts_the_list(http, grpc_client, photos):
    scores = [h.score for h in grpc_client.search("photos", text="red", top_k=24).hits]
    cut = scores[5]
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "red", "top_k": 24, "min_score": cut})
    got = [h["score"] for h in r.json()["hits"]]
    assert got == pytest.approx([s for s in scores if s >= cut]) and len(got) >= 6 and r.json()["next_offset"] is None
    grpc_page = grpc_client.search("photos", text="red", top_k=3, min_score=cut)
    assert len(grpc_page.hits) == 3 and grpc_page.next_offset == 3
    assert all(h.score >= cut - 1e-6 for h in grpc_page.hits)
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "red", "min_score": 2})
    assert r.json()["hits"] == []


# ---- every error: the class's HTTP status, its gRPC status name and the message ----------------------------

def test_search_errors_are_the_grpc_errors(http, server, photos):
    cases = [
        ("nope", {"text": "x"}, 404, "NOT_FOUND", "no collection named 'nope'"),
        ("photos", {}, 400, "INVALID_ARGUMENT", "empty query"),
        ("photos", {"text": ""}, 400, "INVALID_ARGUMENT", "empty query"),
        ("photos", {"text": "x", "filter": "width >= AND x"}, 400, "INVALID_ARGUMENT", "bad filter at column 10"),
        ("photos", {"text": "x", "image": b64(png_bytes(1))}, 400, "INVALID_ARGUMENT", "give one query"),
        ("photos", {"image": b64(b"GIF89a garbage")}, 400, "INVALID_ARGUMENT", "image"),
        ("photos", {"image": "%%% not base64"}, 400, "INVALID_ARGUMENT", "not valid base64"),
        ("photos", {"text": "x", "top_k": 0}, 400, "INVALID_ARGUMENT", "top_k must be between"),
        ("photos", {"text": "x", "top_k": "many"}, 400, "INVALID_ARGUMENT", "top_k"),
        ("photos", {"text": "x", "top_k": 2**40}, 400, "INVALID_ARGUMENT", "top_k"),
        ("photos", {"text": "x", "colour": "red"}, 400, "INVALID_ARGUMENT", "colour: Extra inputs are not permitted"),
        ("photos", {"vector": [0.5] * 31}, 400, "INVALID_ARGUMENT", "has dim 32"),
        ("photos", {"item_id": 987654}, 404, "NOT_FOUND", "item 987654"),
        ("photos", {"item_id": 2**70}, 400, "INVALID_ARGUMENT", "item_id"),
        ("photos", {"text": "x", "rerank": {"model": "/no/such/itm"}}, 404, "NOT_FOUND", "/no/such/itm"),
        ("photos", {"text": "x", "rerank": {"model": server.model}}, 409, "FAILED_PRECONDITION",
         "cannot be loaded as a reranker"),
        ("photos", {"image": b64(os.urandom(1024 * 1024 + 1))}, 413, "RESOURCE_EXHAUSTED", "more than this server takes"),
    ]
    for collection, body, code, status, words in cases:
        r = http("POST", f"/api/v1/collections/{collection}/search", json=body)
        got = error_of(r)
        assert got[:2] == (code, status) and words in got[2], (body.keys(), got)
    r = http("POST", "/api/v1/collections/photos/search", data=b"{not json", headers={"Content-Type": "application/json"})
    assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")
    r = http("POST", "/api/v1/collections/photos/search", data=b'{"text": "\xff\xfe"}',
             headers={"Content-Type": "application/json"})
    assert error_of(r)[:2] == (400, "INVALID_ARGUMENT")  # not UTF-8
    r = http("POST", "/api/v1/collections/photos/search", data='{"text": "\\ud800"}',
             headers={"Content-Type": "application/json"})
    assert error_of(r)[:2] == (400, "INVALID_ARGUMENT") and "surrogate" in r.text
    r = http("POST", "/api/v1/collections/photos/search", data='{"vector": [NaN, 1]}',
             headers={"Content-Type": "application/json"})
    assert error_of(r)[0] == 400
    assert http("GET", "/healthz").json() == {"status": "SERVING"}  # still up


def test_bodies_over_the_limit_are_refused(http, server, photos):
    limit = server.config.max_message_bytes * 4 // 3 + 65536
    r = http("POST", "/api/v1/collections/photos/search", data=b"x" * (limit + 1),
             headers={"Content-Type": "application/json"})
    assert error_of(r)[:2] == (413, "RESOURCE_EXHAUSTED") and "limit" in r.text

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536
    r = http("POST", "/api/v1/collections/photos/search", data=chunks(), headers={"Content-Type": "application/json"})
    assert error_of(r)[:2] == (413, "RESOURCE_EXHAUSTED")
    r = http("POST", "/api/v1/collections/photos/search/upload",
             files={"image": ("big.bin", b"\0" * (server.config.max_message_bytes + 10))})
    assert error_of(r)[:2] == (413, "RESOURCE_EXHAUSTED")
    r = http("POST", "/api/v1/embed", json={"collection": "photos", "texts": ["t"] * 1025})
    assert error_of(r)[:2] == (400, "INVALID_ARGUMENT") and "at most 1024" in r.text


def test_upload_errors(http, photos):
    r = http("POST", "/api/v1/collections/photos/search/upload", data={"top_k": "3"})
    assert error_of(r)[0] == 400 and "image" in r.text
    r = http("POST", "/api/v1/collections/photos/search/upload", files={"image": ("q.png", png_bytes(1))},
             data={"top_k": "lots"})
    assert error_of(r)[0] == 400 and "top_k" in r.text
    r = http("POST", "/api/v1/collections/photos/search/upload", data=b"--x\r\nbroken",
             headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert error_of(r)[0] == 400


@pytest.mark.parametrize("cls", [errors.InvalidInput, errors.NotFound, errors.TooLarge, errors.Busy,
                                 errors.CheckpointError, errors.ImageError, errors.Conflict, errors.CatalogError,
                                 errors.NothingIndexed, errors.DeadlineExceeded, errors.Unavailable,
                                 errors.Unauthenticated, errors.MMSearchError])
def test_every_error_class_keeps_its_status_and_message(http, server, photos, monkeypatch, cls):
    """What the service raises reaches the client as the class's http_status, its gRPC status name and the
    message cut to 1000 characters, through the real routes and middleware."""
    message = "what was wrong " + "x" * 2000

    def fail(*args, **kwargs):
        raise cls(message)
    monkeypatch.setattr(server.service, "search", fail)
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "x"})
    code, status, text = error_of(r)
    assert (code, status) == (cls.http_status, cls.grpc_status)
    assert text.startswith("what was wrong x") and len(text) < 1100 and "more characters" in text
    if code in (429, 503):
        assert r.headers["Retry-After"] == "1"


def test_a_bug_is_internal_without_details(http, server, photos, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyError("SELECT secret FROM items")
    monkeypatch.setattr(server.service, "search", crash)
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "x"})
    assert error_of(r)[:2] == (500, "INTERNAL") and "secret" not in r.text and "server log" in r.text


def test_deadlines(http, server, photos, tmp_path, tiny_siglip_dir):
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "x"}, headers={"X-Request-Timeout": "0.000001"})
    assert error_of(r)[:2] == (504, "DEADLINE_EXCEEDED")
    for bad in ("soon", "-1", "0", "inf"):
        r = http("POST", "/api/v1/collections/photos/search", json={"text": "x"}, headers={"X-Request-Timeout": bad})
        assert error_of(r)[0] == 400 and "X-Request-Timeout" in r.text
    srv = start(ServerConfig(address="", http="127.0.0.1:0", data_dir=str(tmp_path / "d"), health_grace_s=0,
                             preload=[str(tiny_siglip_dir)], default_deadline_s=1e-6))
    try:
        assert srv.port is None  # HTTP only
        url = f"http://127.0.0.1:{srv.http_port}/api/v1/embed"
        r = requests.post(url, json={"model": str(tiny_siglip_dir), "texts": ["x"]}, timeout=30)
        assert error_of(r)[:2] == (504, "DEADLINE_EXCEEDED")  # the server's default applies to calls without one
        r = requests.post(url, json={"model": str(tiny_siglip_dir), "texts": ["x"]}, timeout=30,
                          headers={"X-Request-Timeout": "30"})
        assert r.status_code == 200 and r.json()["dim"] == 32
    finally:
        srv.stop(0)


def test_unknown_routes_and_methods(http):
    assert error_of(http("GET", "/api/v1/nothing"))[:2] == (404, "NOT_FOUND")
    assert error_of(http("GET", "/api/v1/collections/photos/search"))[0] == 405


# ---- embed, items, collections -----------------------------------------------------------------------------

def test_embed_matches_grpc(http, grpc_client, server, photos):
    image = png_bytes(3)
    r = http("POST", "/api/v1/embed", json={"collection": "photos", "texts": ["a cat", "一只猫"], "images": [b64(image)]})
    assert r.status_code == 200, r.text
    got = r.json()
    texts, images = grpc_client.embed(collection="photos", texts=["a cat", "一只猫"], images=[image])
    assert got["dim"] == 32 and got["model"] == server.model
    np.testing.assert_allclose(got["text_vectors"], texts, atol=1e-6)
    np.testing.assert_allclose(got["image_vectors"], images, atol=1e-6)
    assert error_of(http("POST", "/api/v1/embed", json={"texts": ["x"]}))[0] == 400  # neither collection nor model
    assert error_of(http("POST", "/api/v1/embed", json={"model": "/etc", "texts": ["x"]}))[:2] == (404, "NOT_FOUND")


def test_get_items_and_collections(http, grpc_client, photos):
    ids = [photos[2], photos[17], photos[5]]
    r = http("GET", f"/api/v1/collections/photos/items?ids={ids[0]},{ids[1]}&ids={ids[2]}")
    items = r.json()["items"]
    assert [i["id"] for i in items] == ids and items[0]["metadata"] == item_meta(2)
    assert items[1]["uri"].endswith("file-17.png") and items[0]["uri"] == "photo-2.png"
    want = grpc_client.get("photos", ids)
    assert [i["sha256"] for i in items] == [w.sha256 for w in want] and "vector" not in items[0]
    one = http("GET", f"/api/v1/collections/photos/items/{ids[0]}?include_vector=true").json()
    assert len(one["vector"]) == 32 and one["width"] == 34 and one["created"].endswith("Z")
    for path, code in ((f"/api/v1/collections/photos/items?ids={ids[0]},999999", 404), ("/api/v1/collections/photos/items?ids=x", 400),
                       ("/api/v1/collections/photos/items/-1", 400), (f"/api/v1/collections/photos/items/{2**64}", 400),
                       ("/api/v1/collections/nope/items/1", 404), ("/api/v1/collections/photos/items", 400)):
        assert error_of(http("GET", path))[0] == code, path
    listed = {c["name"]: c for c in http("GET", "/api/v1/collections").json()["collections"]}
    assert listed["photos"]["items"] == 24 and listed["photos"]["dim"] == 32
    stats = http("GET", "/api/v1/collections/photos").json()
    assert stats["indexed"] == 24 and stats["index"] == grpc_client.collection_stats("photos").index
    assert error_of(http("GET", "/api/v1/collections/nope"))[:2] == (404, "NOT_FOUND")


# ---- thumbnails and originals: by item id, cached, signed ---------------------------------------------------

def test_thumbnails_are_made_from_the_item_and_cached_for_good(http, server, photos):
    from indexer.thumbnails import thumbnail_path

    hit = http("POST", "/api/v1/collections/photos/search", json={"item_id": photos[1], "top_k": 1}).json()["hits"][0]
    item = http("GET", f"/api/v1/collections/photos/items/{hit['id']}").json()
    path = thumbnail_path(server.store.data_dir, item["sha256"])
    r = requests.get(server.url + hit["thumbnail"], timeout=30)  # no header: the signed URL lets an <img> in
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp" and r.content[8:12] == b"WEBP"
    assert os.path.isfile(path) and Path(path).read_bytes() == r.content  # written under DATA_DIR/thumbs once
    assert r.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    etag = r.headers["ETag"]
    assert etag == '"' + hashlib.blake2b(r.content, digest_size=16).hexdigest() + '"'
    again = requests.get(server.url + hit["thumbnail"], headers={"If-None-Match": etag}, timeout=30)
    assert again.status_code == 304 and again.content == b""
    unversioned = http("GET", f"/api/v1/collections/photos/items/{hit['id']}/thumbnail")
    assert unversioned.status_code == 200 and "no-cache" in unversioned.headers["Cache-Control"]
    forged = hit["thumbnail"].replace(f"/items/{hit['id']}/", f"/items/{photos[2]}/")  # another item, same sig
    assert error_of(requests.get(server.url + forged, timeout=30))[:2] == (401, "UNAUTHENTICATED")
    other = hit["thumbnail"].replace("/thumbnail?", "/image?")  # a thumbnail's signature does not open originals
    assert error_of(requests.get(server.url + other, timeout=30))[0] == 401


def test_originals_only_from_what_the_item_was_made_from(http, server, photos):
    kept = http("GET", f"/api/v1/collections/photos/items/{photos[4]}/image")
    assert kept.status_code == 200 and kept.content == png_bytes(4, 36, 30)  # the kept copy of uploaded bytes
    assert kept.headers["content-type"] == "image/png" and kept.headers["ETag"] == f'"{hashlib.sha256(kept.content).hexdigest()}"'
    assert "sandbox" in kept.headers["Content-Security-Policy"] and kept.headers["X-Content-Type-Options"] == "nosniff"
    on_disk = http("GET", f"/api/v1/collections/photos/items/{photos[18]}/image")
    assert on_disk.status_code == 200 and on_disk.content == (server.files / "file-18.png").read_bytes()
    # the file changed since it was indexed: not this item's picture any more, and no thumbnail is made of it
    (server.files / "file-19.png").write_bytes(png_bytes(999, 30, 30))
    changed = http("GET", f"/api/v1/collections/photos/items/{photos[19]}/image")
    assert error_of(changed)[0] == 400 and "changed since it was indexed" in changed.text
    from indexer.thumbnails import thumbnail_path

    item = http("GET", f"/api/v1/collections/photos/items/{photos[19]}").json()
    written = thumbnail_path(server.store.media_dir, item["sha256"])  # at Upsert time, of what was indexed
    assert os.path.isfile(written)
    os.unlink(written)
    assert error_of(http("GET", f"/api/v1/collections/photos/items/{photos[19]}/thumbnail"))[:2] == (404, "NOT_FOUND")
    # nothing in the URL is a path: traversal spellings are just unknown collections or bad ids
    for path in ("/api/v1/collections/..%2F..%2Fetc/items/1/image", "/api/v1/collections/photos/items/..%2F1/image",
                 "/api/v1/collections/photos/items/1%2F..%2F..%2Fpasswd/thumbnail"):
        assert http("GET", path).status_code in (400, 404), path


# ---- operations --------------------------------------------------------------------------------------------

def test_metrics_cover_both_transports(http, grpc_client, server, photos):
    grpc_client.search("photos", text="metrics", top_k=3)
    http("POST", "/api/v1/collections/photos/search", json={"text": "metrics", "top_k": 3, "filter": "meta.i > 2"})
    http("POST", "/api/v1/collections/nope/search", json={"text": "x"})
    with pytest.raises(grpc.RpcError):
        grpc_client.search("nope", text="x")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # refused by the token check
        from protos.mmsearch.v1 import search_pb2 as pb, search_pb2_grpc as pb_grpc
        with pytest.raises(grpc.RpcError):
            pb_grpc.SearchServiceStub(channel).ListCollections(pb.ListCollectionsRequest(), timeout=5)
    text = requests.get(server.url + "/metrics", timeout=30).text

    def value(name: str, **labels) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
                if all(got.get(k) == v for k, v in labels.items()):
                    return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} {labels} not in /metrics:\n{text[:3000]}")

    assert value("mmsearch_requests_total", transport="grpc", method="Search") >= 2
    assert value("mmsearch_requests_total", transport="http", method="Search") >= 2
    assert value("mmsearch_request_errors_total", transport="http", method="Search", status="NOT_FOUND") >= 1
    assert value("mmsearch_request_errors_total", transport="grpc", method="Search", status="NOT_FOUND") >= 1
    assert value("mmsearch_request_errors_total", transport="grpc", method="ListCollections",
                 status="UNAUTHENTICATED") >= 1
    assert value("mmsearch_request_duration_seconds_count", transport="http", method="Search") >= 2
    for stage in ("encode", "filter", "ann", "fetch", "total"):
        assert value("mmsearch_search_stage_seconds_count", stage=stage) >= 1, stage
    assert value("mmsearch_encoder_batch_size_count", kind="text") >= 1
    assert value("mmsearch_collection_items", collection="photos") == 24
    assert value("mmsearch_index_vectors", collection="photos") == 24
    assert value("mmsearch_models_loaded", kind="dual", model=server.model) == 1
    assert value("mmsearch_serving") == 1 and value("mmsearch_model_loads_total") >= 1
    assert "mmsearch_decoded_pixels_in_use" in text


def test_config_http_key_and_addresses(tmp_path):
    (tmp_path / "server.toml").write_text('http = "127.0.0.1:0"\naddress = ""\n')
    config = ServerConfig.from_file(str(tmp_path / "server.toml"))
    assert (config.http, config.address) == ("127.0.0.1:0", "")
    with pytest.raises(errors.InvalidInput, match="nothing to serve"):
        ServerConfig(address="", http="").check()
    for bad in ("nowhere", "127.0.0.1:99999", "256.1.1.1:80"):
        with pytest.raises(errors.InvalidInput, match="http address|cannot listen"):
            start(ServerConfig(address="", http=bad, data_dir=str(tmp_path / "d")))


def _start_cli(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "serve", "--no-grpc", "--http", "127.0.0.1:0",
                             "--data-dir", str(tmp_path / "data"), *args], stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "server.log", "w"), text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    assert "mmsearch serving on http://127.0.0.1:" in line and "(gRPC)" not in line, \
        (line, (tmp_path / "server.log").read_text())
    return proc, re.search(r"(http://127\.0\.0\.1:\d+)/", line).group(1)


def test_sigterm_readyz_not_serving_window_then_drain(tmp_path, tiny_siglip_dir):
    proc, url = _start_cli(tmp_path, "--health-grace", "1.5", "--batch-wait-ms", "1500", "--workers", "4",
                           "--preload", str(tiny_siglip_dir))
    try:
        assert requests.get(url + "/readyz", timeout=10).status_code == 200
        import threading
        done = {}

        def embed(i):  # held in the batcher's 1.5 s window while the signal arrives
            r = requests.post(url + "/api/v1/embed", json={"model": str(tiny_siglip_dir), "texts": [f"a{i}", "b"]},
                              timeout=60)
            done[i] = (r.status_code, time.monotonic())
        requests.post(url + "/api/v1/embed", json={"model": str(tiny_siglip_dir), "texts": ["warm", "up"]}, timeout=60)
        threads = [threading.Thread(target=embed, args=(i,)) for i in range(2)]
        [t.start() for t in threads]
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        while requests.get(url + "/readyz", timeout=10).status_code != 503:
            time.sleep(0.01)
        not_serving_at = time.monotonic()
        assert requests.get(url + "/healthz", timeout=10).json() == {"status": "NOT_SERVING"}
        assert requests.get(url + "/api/v1/collections", timeout=10).status_code == 200  # still taking calls
        [t.join() for t in threads]
        assert [done[i][0] for i in (0, 1)] == [200, 200] and all(at > not_serving_at for _, at in done.values())
        assert proc.wait(timeout=30) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/readyz", timeout=5)
        assert "mmsearch server stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_rerank_cut_off_and_ask_fields_over_http(http, grpc_client, server, photos):
    body = {"text": "a photo", "top_k": 8, "rerank": {"model": server.itm, "depth": 8}}
    full = http("POST", "/api/v1/collections/photos/search", json=body).json()["hits"]
    cut = sorted(h["rerank_score"] for h in full)[4]
    kept = http("POST", "/api/v1/collections/photos/search", json={**body, "min_rerank_probability": cut}).json()["hits"]
    want = grpc_client.search("photos", text="a photo", top_k=8, rerank_model=server.itm, rerank_depth=8,
                              min_rerank_probability=cut).hits
    assert [h["id"] for h in kept] == [h.id for h in want] and 0 < len(kept) < len(full)
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "x", "ask": "a dog?", "ask_model": "/nope"})
    assert error_of(r)[:2] == (404, "NOT_FOUND")
    r = http("POST", "/api/v1/collections/photos/search", json={"text": "x", "include_regions": True})
    assert error_of(r)[:2] == (400, "INVALID_ARGUMENT") and "GroupViT" in error_of(r)[2]
