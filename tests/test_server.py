"""The gRPC server on a loopback port with tiny checkpoints: every RPC, every status code, health,
reflection, auth, TLS, size limits, 50 concurrent clients, client retries and SIGTERM drain."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

import encoders
from protos.mmsearch.v1 import search_pb2 as pb
from protos.mmsearch.v1 import search_pb2_grpc as pb_grpc
from search.client import SearchClient
from search.config import ServerConfig
from search.grpc_api import struct_to_dict
from search.server import start
from search_helpers import item_meta, png_bytes

TOKEN = "s3cret-token"
ROOT = Path(__file__).resolve().parent.parent


def test_generated_protos_are_current():
    from protos.generate import stale_files

    assert stale_files() == [], "run: python -m protos.generate"


@pytest.fixture(scope="module")
def blip_dirs(tiny_blip_dirs):
    return tiny_blip_dirs


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_siglip_dir, blip_dirs):
    root = tmp_path_factory.mktemp("server")
    files = root / "files"
    files.mkdir()
    config = ServerConfig(address="127.0.0.1:0", data_dir=str(root / "data"), token=TOKEN, max_message_mb=1,
                          workers=64, image_roots=[str(files)], batch_wait_ms=5, health_grace_s=0,
                          allow_models=[str(tiny_siglip_dir), *map(str, blip_dirs)])
    srv = start(config)
    srv.files = files
    srv.model = str(tiny_siglip_dir)
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def client(server):
    with SearchClient(f"127.0.0.1:{server.port}", token=TOKEN, retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def photos(client, server):
    """A collection of 16 PNGs upserted through the API; returns {seed: id}."""
    client.create_collection("photos", model=server.model)
    items = [{"image": png_bytes(i, 32 + i, 30), "uri": f"photo-{i}.png", "metadata": item_meta(i)} for i in range(16)]
    response = client.upsert("photos", items)
    assert response.upserted == 16 and response.failed == 0
    return {i: s.id for i, s in enumerate(response.statuses)}


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# ---- health, reflection, auth, TLS -----------------------------------------------------------------------

def test_health_is_served_without_a_token(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mmsearch.v1.SearchService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert code_of(lambda: stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5))[0] == \
            grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"mmsearch.v1.SearchService", "grpc.health.v1.Health"} <= services
        pool = DescriptorPool(db)
        service = pool.FindServiceByName("mmsearch.v1.SearchService")
        assert {m.name for m in service.methods} == {
            "Search", "Embed", "Rerank", "Caption", "Ask", "Upsert", "Delete", "Get", "CreateCollection",
            "ListCollections", "DropCollection", "CollectionStats"}
        assert pool.FindMessageTypeByName("mmsearch.v1.SearchRequest").fields_by_name["top_k"].number == 6


def test_missing_or_wrong_token_is_unauthenticated(server, photos):
    for metadata, words in ((None, "missing authorization"), ((("authorization", "Bearer nope"),), "wrong bearer"),
                            ((("authorization", TOKEN),), "wrong bearer")):
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            code, details = code_of(lambda: stub.Search(pb.SearchRequest(collection="photos", text="x", top_k=1),
                                                        metadata=metadata, timeout=5))
            assert code == grpc.StatusCode.UNAUTHENTICATED and words in details
            code, _ = code_of(lambda: stub.Upsert(iter([pb.UpsertRequest(collection="photos")]), metadata=metadata,
                                                  timeout=5))
            assert code == grpc.StatusCode.UNAUTHENTICATED


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls(tmp_path):
    cert, key = _self_signed(tmp_path)
    srv = start(ServerConfig(address="127.0.0.1:0", data_dir=str(tmp_path / "data"), tls_cert=str(cert),
                             tls_key=str(key)))
    try:
        with SearchClient(f"localhost:{srv.port}", root_certificates=cert.read_bytes()) as c:
            assert c.health() == "SERVING"
            assert c.list_collections() == []
        with SearchClient(f"localhost:{srv.port}", retries=0, timeout=3) as plain:  # plaintext to a TLS port
            assert code_of(plain.list_collections)[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(0)


# ---- collections -----------------------------------------------------------------------------------------

def test_collections_lifecycle(client, server, photos):
    info = client.create_collection("scratch", model=server.model, index="flat")
    assert (info.name, info.dim, info.items, info.index) == ("scratch", 32, 0, "flat")
    assert info.model_digest == encoders.load(server.model).digest
    assert [c.name for c in client.list_collections()] == ["photos", "scratch"]
    stats = client.collection_stats("photos")
    assert stats.items == 16 and stats.indexed == 16 and stats.index == "flat"
    code, details = code_of(lambda: client.create_collection("scratch", model=server.model))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already exists" in details
    code, details = code_of(lambda: client.create_collection("bad name!", model=server.model))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bad name!" in details
    code, details = code_of(lambda: client.create_collection("x", model="/no/such/model"))
    assert code == grpc.StatusCode.NOT_FOUND and "/no/such/model" in details
    code, details = code_of(lambda: client.create_collection("x", model=server.model, index="lsh"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "index spec" in details
    client.drop_collection("scratch")
    assert [c.name for c in client.list_collections()] == ["photos"]
    for call in (lambda: client.drop_collection("scratch"), lambda: client.collection_stats("scratch")):
        code, details = code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and "scratch" in details


# ---- items -----------------------------------------------------------------------------------------------

def test_upsert_reports_each_item(client, server, photos):
    on_disk = server.files / "disk.png"
    on_disk.write_bytes(png_bytes(100))
    items = [
        {"image": png_bytes(101), "uri": "new.png", "metadata": {"tag": "fresh", "n": 3}},
        {"image": b"\x89PNG\r\n\x1a\nnot really", "uri": "broken.png"},
        {"image": png_bytes(3, 35, 30), "uri": "copy-of-3.png"},
        {"uri": str(on_disk), "metadata": {"tag": "disk"}},
        {"uri": "/etc/passwd"},
        {"uri": "", "metadata": {}},
        {"image": png_bytes(102)},
    ]
    response = client.upsert("photos", items)
    st = response.statuses
    assert [s.index for s in st] == list(range(7))
    assert st[0].ok and st[0].id > 0 and st[0].code == 0
    assert not st[1].ok and st[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and st[1].error
    assert not st[2].ok and st[2].code == grpc.StatusCode.ALREADY_EXISTS.value[0] and st[2].id == photos[3]
    assert st[3].ok and client.get("photos", [st[3].id])[0].uri == str(on_disk)
    assert not st[4].ok and "outside the folders this server may read" in st[4].error
    assert not st[5].ok and "bytes or a uri" in st[5].error
    assert st[6].ok and client.get("photos", [st[6].id])[0].uri.startswith("sha256:")
    assert (response.upserted, response.failed) == (3, 4)
    # the same uri again replaces the item: same id, new metadata and content
    again = client.upsert("photos", [{"image": png_bytes(103), "uri": "new.png", "metadata": {"tag": "v2"}}])
    assert again.statuses[0].ok and again.statuses[0].id == st[0].id
    item = client.get("photos", [st[0].id])[0]
    assert struct_to_dict(item.metadata) == {"tag": "v2"}
    assert client.delete("photos", [st[0].id, st[3].id, st[6].id]) == 3
    code, _ = code_of(lambda: client.upsert("nope", [{"image": png_bytes(1)}]))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = code_of(lambda: client.upsert("photos", []))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty Upsert stream" in details


def test_upsert_with_own_vectors(client, server):
    """UpsertItem.vector: no image needed (the uri is a label), dim checked, normalised; with an image the
    image gives the size and the given vector is stored as sent (not re-encoded)."""
    info = client.create_collection("byo", model=server.model)
    rng = np.random.default_rng(7)
    v = rng.standard_normal((3, info.dim)).astype(np.float32)
    items = [
        {"uri": "s3://bucket/a.jpg", "vector": 3 * v[0], "metadata": {"src": "laion"}},
        {"uri": "b", "vector": v[1][:-1]},
        {"uri": "c", "vector": np.zeros(info.dim)},
        {"uri": "d.png", "image": png_bytes(5, 41, 33), "vector": v[2]},
        {"uri": "copy", "vector": 3 * v[0]},
        {"uri": "/not/read/by/the/server.jpg", "vector": v[1]},
    ]
    st = client.upsert("byo", items).statuses
    assert [s.ok for s in st] == [True, False, False, True, False, True]
    assert st[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and f"has dim {info.dim}" in st[1].error
    assert "all zeros" in st[2].error
    assert st[4].code == grpc.StatusCode.ALREADY_EXISTS.value[0] and st[4].id == st[0].id
    a, d = client.get("byo", [st[0].id, st[3].id], include_vector=True)
    np.testing.assert_allclose(a.vector.values, v[0] / np.linalg.norm(v[0]), atol=1e-6)
    assert a.uri == "s3://bucket/a.jpg" and struct_to_dict(a.metadata) == {"src": "laion"} and a.width == 0
    np.testing.assert_allclose(d.vector.values, v[2] / np.linalg.norm(v[2]), atol=1e-6)
    assert (d.width, d.height) == (41, 33)
    hits = client.search("byo", vector=v[0], top_k=2).hits
    assert hits[0].id == st[0].id and hits[0].score == pytest.approx(1.0, abs=1e-5)
    client.drop_collection("byo")


def test_get_and_delete(client, photos):
    items = client.get("photos", [photos[5], photos[2]], include_vector=True)
    assert [i.id for i in items] == [photos[5], photos[2]]
    assert struct_to_dict(items[0].metadata) == item_meta(5) and items[0].uri == "photo-5.png"
    assert len(items[0].vector.values) == 32 and items[0].width == 37
    code, details = code_of(lambda: client.get("photos", [photos[1], 424242]))
    assert code == grpc.StatusCode.NOT_FOUND and "424242" in details
    assert code_of(lambda: client.get("nope", [1]))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: client.delete("photos", []))[0] == grpc.StatusCode.INVALID_ARGUMENT
    extra = client.upsert("photos", [{"image": png_bytes(200), "uri": "temp.png"}]).statuses[0].id
    assert client.delete("photos", [extra, 999_999]) == 1
    hits = client.search("photos", vector=client.get("photos", [photos[0]], include_vector=True)[0].vector.values,
                         top_k=100).hits
    assert extra not in [h.id for h in hits] and len(hits) == 16


# ---- search ----------------------------------------------------------------------------------------------

def test_search_text_with_filter_and_includes(client, server, photos):
    r = client.search("photos", text="a red circle", top_k=4, filter='meta.color = "red" AND meta.i >= 3',
                      include_metadata=True, include_vector=True)
    assert r.filter_strategy == "id_selector"
    expected = {photos[i] for i in photos if item_meta(i)["color"] == "red" and i >= 3}
    assert len(r.hits) == 4 and {h.id for h in r.hits} <= expected
    assert [h.score for h in r.hits] == sorted((h.score for h in r.hits), reverse=True)
    assert all(struct_to_dict(h.metadata)["color"] == "red" for h in r.hits)
    assert all(len(h.vector.values) == 32 and not h.HasField("rerank_score") for h in r.hits)
    assert r.timing.total_ms > 0 and r.timing.encode_ms > 0
    enc = encoders.load(server.model)
    q = enc.encode_texts(["a red circle"])[0]
    for h in r.hits:
        assert h.score == pytest.approx(float(np.dot(q, h.vector.values)), abs=1e-5)


def test_search_by_image_vector_and_item(client, photos):
    by_image = client.search("photos", image=png_bytes(9, 41, 30), top_k=3)
    assert by_image.hits[0].id == photos[9] and by_image.hits[0].score == pytest.approx(1.0, abs=1e-5)
    vec = client.get("photos", [photos[9]], include_vector=True)[0].vector.values
    assert [h.id for h in client.search("photos", vector=vec, top_k=3).hits] == [h.id for h in by_image.hits]
    like = client.search("photos", item_id=photos[9], top_k=2)
    assert [h.id for h in like.hits] == [h.id for h in by_image.hits[1:3]]


def test_search_errors_name_the_problem(client, server, photos):
    big = os.urandom(2 * 1024 * 1024)
    cases = [
        (dict(collection="nope", text="x"), grpc.StatusCode.NOT_FOUND, "no collection named 'nope'"),
        (dict(collection="photos"), grpc.StatusCode.INVALID_ARGUMENT, "empty query"),
        (dict(collection="photos", text=""), grpc.StatusCode.INVALID_ARGUMENT, "empty query"),
        (dict(collection="photos", text="x", filter="width >= AND x"), grpc.StatusCode.INVALID_ARGUMENT,
         "bad filter at column 10"),
        (dict(collection="photos", text="x", filter="colour = 'red'"), grpc.StatusCode.INVALID_ARGUMENT,
         "unknown field 'colour'"),
        (dict(collection="photos", image=b"GIF89a garbage"), grpc.StatusCode.INVALID_ARGUMENT, "image"),
        (dict(collection="photos", text="x", top_k=0), grpc.StatusCode.INVALID_ARGUMENT, "top_k must be between"),
        (dict(collection="photos", text="x", top_k=10_001), grpc.StatusCode.INVALID_ARGUMENT, "10001"),
        (dict(collection="photos", vector=[0.5] * 31), grpc.StatusCode.INVALID_ARGUMENT, "has dim 32"),
        (dict(collection="photos", item_id=987654), grpc.StatusCode.NOT_FOUND, "item 987654"),
        (dict(collection="photos", text="x", rerank_model="/no/such/itm"), grpc.StatusCode.NOT_FOUND, "/no/such/itm"),
        (dict(collection="photos", text="x", rerank_model=server.model), grpc.StatusCode.FAILED_PRECONDITION,
         "cannot be loaded as a reranker"),
        (dict(collection="photos", image=big), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ]
    for kwargs, code, words in cases:
        got, details = code_of(lambda: client.search(**{"top_k": 3, **kwargs}))
        assert (got, words in details) == (code, True), (kwargs.keys(), got, details)
    assert client.health() == "SERVING"  # still up after every error
    assert len(client.search("photos", text="x", top_k=2).hits) == 2


def test_deadline_is_honoured(client, photos, blip_dirs):
    # A tiny-model Search answers within gRPC's millisecond deadline granularity on a fast machine, so any
    # short deadline on it races (0.5 ms failed in CI, 1 µs here). Beam-search captions of 32 images take
    # tens of milliseconds (8 images, 20 tokens: 12 ms in-process here), so a 1 ms deadline passes first. The server's own
    # deadline checks are in test_server_hardening.
    _, cap = map(str, blip_dirs)
    images = [png_bytes(i) for i in range(32)]
    code, _ = code_of(lambda: client.caption(cap, images, max_new_tokens=30, num_beams=3, timeout=1e-3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_fifty_concurrent_clients(server, photos):
    texts = [f"query number {i}" for i in range(50)]
    with SearchClient(f"127.0.0.1:{server.port}", token=TOKEN) as one:
        expected = {t: [h.id for h in one.search("photos", text=t, top_k=5).hits] for t in texts}

    def run(text):
        with SearchClient(f"127.0.0.1:{server.port}", token=TOKEN) as c:
            return [[h.id for h in c.search("photos", text=text, top_k=5, filter="meta.i >= 0").hits]
                    for _ in range(3)]

    before = server.models.dual(server.model).stats["text_batches"]
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(run, texts))
    assert all(r == [expected[t]] * 3 for t, r in zip(texts, results))
    batches = server.models.dual(server.model).stats["text_batches"] - before
    assert batches < 150, f"{batches} encoder calls for 150 concurrent queries: nothing was batched"


# ---- model RPCs ------------------------------------------------------------------------------------------

def test_embed(client, server, photos):
    enc = encoders.load(server.model)
    from encoders.preprocess import load_image

    texts, images = ["a cat", "一只猫"], [png_bytes(1), png_bytes(2, 50, 20)]
    tv, iv = client.embed(texts=texts, images=images, model=server.model)
    np.testing.assert_allclose(tv, enc.encode_texts(texts), atol=1e-5)
    np.testing.assert_allclose(iv, enc.encode_images([load_image(b) for b in images]), atol=1e-5)
    tv2, iv2 = client.embed(texts=texts, collection="photos")
    np.testing.assert_allclose(tv2, tv, atol=1e-6)
    assert iv2.shape == (0, 32)
    for kwargs, code, words in [
        (dict(texts=["x"]), grpc.StatusCode.INVALID_ARGUMENT, "either a collection or a model"),
        (dict(texts=["x"], model=server.model, collection="photos"), grpc.StatusCode.INVALID_ARGUMENT, "either"),
        (dict(model=server.model), grpc.StatusCode.INVALID_ARGUMENT, "nothing to embed"),
        (dict(texts=["ok", " "], model=server.model), grpc.StatusCode.INVALID_ARGUMENT, "texts[1] is empty"),
        (dict(images=[png_bytes(1), b"junk"], model=server.model), grpc.StatusCode.INVALID_ARGUMENT, "images[1]"),
        (dict(texts=["x"], collection="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ]:
        got, details = code_of(lambda: client.embed(**kwargs))
        assert got == code and words in details, details


def test_rerank_caption_and_two_stage_search(client, photos, blip_dirs):
    itm, cap = map(str, blip_dirs)
    rr = encoders.load_reranker(itm)
    from encoders.preprocess import load_image

    image = png_bytes(4, 36, 30)
    probs = client.rerank(itm, image, ["a cat", "two blue squares"])
    np.testing.assert_allclose(probs, rr.score([load_image(image)] * 2, ["a cat", "two blue squares"]), atol=1e-5)
    captions = client.caption(cap, [image, png_bytes(5)], max_new_tokens=6)
    assert captions == encoders.load_captioner(cap).caption([load_image(image), load_image(png_bytes(5))],
                                                            max_new_tokens=6)
    # two-stage search over items whose images came as bytes (kept by the server for the reranker)
    r = client.search("photos", text="a cat", top_k=5, rerank_model=itm, rerank_depth=8)
    assert len(r.hits) == 5 and all(h.HasField("rerank_score") for h in r.hits) and r.timing.rerank_ms > 0
    assert [h.rerank_score for h in r.hits] == sorted((h.rerank_score for h in r.hits), reverse=True)
    first = client.search("photos", text="a cat", top_k=8)
    assert {h.id for h in r.hits} <= {h.id for h in first.hits}
    with_captions = client.search("photos", text="a cat", top_k=2, caption_model=cap)
    assert all(h.caption for h in with_captions.hits)
    for call, code, words in [
        (lambda: client.rerank(itm, image, []), grpc.StatusCode.INVALID_ARGUMENT, "at least one text"),
        (lambda: client.rerank(itm, b"junk", ["x"]), grpc.StatusCode.INVALID_ARGUMENT, "image"),
        (lambda: client.caption(cap, []), grpc.StatusCode.INVALID_ARGUMENT, "at least one image"),
        (lambda: client.caption(cap, [image], num_beams=99), grpc.StatusCode.INVALID_ARGUMENT, "num_beams"),
        (lambda: client.caption("/nope", [image]), grpc.StatusCode.NOT_FOUND, "/nope"),
    ]:
        got, details = code_of(call)
        assert got == code and words in details, details


# ---- client retries, CLI, SIGTERM ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_while_the_server_comes_up(tmp_path):
    port = _free_port()
    holder = {}

    def late_start():
        time.sleep(0.6)
        holder["srv"] = start(ServerConfig(address=f"127.0.0.1:{port}", data_dir=str(tmp_path / "d")))

    thread = threading.Thread(target=late_start)
    thread.start()
    try:
        with SearchClient(f"127.0.0.1:{port}", retries=8, backoff=0.1, timeout=20) as c:
            assert c.list_collections() == []
        with SearchClient(f"127.0.0.1:{_free_port()}", retries=1, backoff=0.01, timeout=5) as nobody:
            assert code_of(nobody.list_collections)[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        thread.join()
        holder["srv"].stop(0)


def test_cli_query_through_the_server(server, photos, capsys, monkeypatch):
    from search.cli import main

    monkeypatch.setenv("MMSEARCH_TOKEN", TOKEN)
    assert main(["query", "a cat", "--collection", "photos", "-k", "3", "--json", "--server",
                 f"127.0.0.1:{server.port}", "--filter", "meta.even = true"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["hits"]) == 3 and all(h["metadata"]["even"] is True for h in out["hits"])
    assert main(["query", "a cat", "--collection", "nope", "--server", f"127.0.0.1:{server.port}"]) == 3
    assert "NOT_FOUND" in capsys.readouterr().err
    monkeypatch.setenv("MMSEARCH_TOKEN", "wrong")
    assert main(["query", "a cat", "--collection", "photos", "--server", f"127.0.0.1:{server.port}"]) == 11
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_search_cut_offs_over_grpc(client, photos):
    full = client.search("photos", text="a red circle", top_k=8).hits
    cut = full[3].score
    kept = client.search("photos", text="a red circle", top_k=8, min_score=cut).hits
    assert [h.id for h in kept] == [h.id for h in full if h.score >= cut] and len(kept) >= 4
    code, details = code_of(lambda: client.search("photos", text="x", min_rerank_probability=0.5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs a reranker" in details
