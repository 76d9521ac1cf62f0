"""The server against stock clients, attackers and careless users: calls without deadlines, uploads that
try to read the server's files, requests that decode to gigabytes, FIFOs, models nobody allowed, odd
inputs that must never become INTERNAL, and shutdown with calls in flight or stuck."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

import encoders
from encoders.preprocess import load_image
from protos.mmsearch.v1 import search_pb2 as pb
from protos.mmsearch.v1 import search_pb2_grpc as pb_grpc
from search.client import SearchClient
from search.config import ServerConfig
from search.server import start
from search_helpers import png_bytes

ROOT = Path(__file__).resolve().parent.parent


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def one_bit_png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (width, height), 1).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    (base / "allowed").mkdir()
    (base / "outside").mkdir()
    return base


@pytest.fixture(scope="module")
def server(roots, tiny_siglip_dir, tiny_blip_dirs):
    itm, cap = map(str, tiny_blip_dirs)
    srv = start(ServerConfig(address="127.0.0.1:0", data_dir=str(roots / "data"), workers=8, health_grace_s=0,
                             image_roots=[str(roots / "allowed")], allow_models=[itm, cap],
                             preload=[str(tiny_siglip_dir)], pixel_budget_mp=40, max_image_mp=40))
    srv.itm, srv.cap, srv.model = itm, cap, str(tiny_siglip_dir)
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}",
                               options=[("grpc.max_receive_message_length", 64 << 20),
                                        ("grpc.max_send_message_length", 64 << 20)]) as channel:
        yield pb_grpc.SearchServiceStub(channel)


@pytest.fixture(scope="module")
def photos(server):
    with SearchClient(f"127.0.0.1:{server.port}", retries=0) as c:
        c.create_collection("photos", model=server.model)
        response = c.upsert("photos", [{"image": png_bytes(i, 32 + i, 30), "uri": f"p{i}.png"} for i in range(8)])
        assert response.upserted == 8
        return [s.id for s in response.statuses]


# ---- calls without a deadline (grpcurl, Postman, most generated clients) ------------------------------------

def test_every_rpc_works_without_a_client_deadline(server, stub, photos):
    image = png_bytes(1)
    assert stub.Search(pb.SearchRequest(collection="photos", text="a cat", top_k=3)).hits
    assert stub.Search(pb.SearchRequest(collection="photos", image=image, top_k=3)).hits
    assert stub.Embed(pb.EmbedRequest(collection="photos", texts=["x"], images=[image])).dim == 32
    assert stub.Rerank(pb.RerankRequest(model=server.itm, image=image, texts=["x"])).probabilities
    assert stub.Caption(pb.CaptionRequest(model=server.cap, images=[image], max_new_tokens=3)).captions
    items = [pb.UpsertRequest(collection="photos", item=pb.UpsertItem(image=png_bytes(50), uri="nodeadline.png"))]
    upserted = stub.Upsert(iter(items))
    assert upserted.upserted == 1
    new_id = upserted.statuses[0].id
    assert stub.Get(pb.GetRequest(collection="photos", ids=[new_id])).items[0].uri == "nodeadline.png"
    assert stub.Delete(pb.DeleteRequest(collection="photos", ids=[new_id])).deleted == 1
    assert stub.CreateCollection(pb.CreateCollectionRequest(name="nd", model=server.model)).name == "nd"
    assert "nd" in [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections]
    assert stub.CollectionStats(pb.CollectionStatsRequest(name="nd")).items == 0
    stub.DropCollection(pb.DropCollectionRequest(name="nd"))


def test_the_server_applies_its_own_default_deadline(tmp_path, tiny_siglip_dir):
    srv = start(ServerConfig(address="127.0.0.1:0", data_dir=str(tmp_path / "d"), health_grace_s=0,
                             preload=[str(tiny_siglip_dir)], default_deadline_s=1e-6))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = pb_grpc.SearchServiceStub(channel)
            code, details = code_of(lambda: stub.Embed(pb.EmbedRequest(model=str(tiny_siglip_dir), texts=["x"])))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "deadline" in details
            # a client's own deadline wins over the default
            assert stub.Embed(pb.EmbedRequest(model=str(tiny_siglip_dir), texts=["x"]), timeout=30).dim == 32
    finally:
        srv.stop(0)


# ---- the pixels a stage reads are what the item was made from ----------------------------------------------

def test_a_decoy_upload_cannot_read_the_servers_files(server, roots, tiny_blip_dirs):
    decoy, secret = png_bytes(300, 40, 40), png_bytes(301, 40, 40)
    targets = [roots / "outside" / "secret.png", roots / "allowed" / "secret.png"]
    for path in targets:
        path.write_bytes(secret)
    rr, cap = encoders.load_reranker(server.itm), encoders.load_captioner(server.cap)
    want = float(rr.score([load_image(decoy)], ["a cat"])[0])
    assert abs(want - float(rr.score([load_image(secret)], ["a cat"])[0])) > 1e-4  # the two are told apart
    with SearchClient(f"127.0.0.1:{server.port}", retries=0) as c:
        c.create_collection("decoys", model=server.model)
        ids = [s.id for s in c.upsert("decoys", [{"image": decoy, "uri": str(targets[0])}]).statuses]
        r = c.search("decoys", text="a cat", top_k=1, rerank_model=server.itm, caption_model=server.cap)
        assert r.hits[0].id == ids[0]
        assert r.hits[0].rerank_score == pytest.approx(want, abs=1e-5)
        assert r.hits[0].caption == cap.caption([load_image(decoy)])[0]
        c.drop_collection("decoys")


def test_without_a_kept_copy_a_mismatched_or_outside_file_is_not_read(tmp_path, roots, tiny_siglip_dir,
                                                                       tiny_blip_dirs):
    itm = str(tiny_blip_dirs[0])
    secret = png_bytes(302, 40, 40)
    (roots / "allowed" / "inside.png").write_bytes(secret)
    (roots / "outside" / "far.png").write_bytes(secret)
    srv = start(ServerConfig(address="127.0.0.1:0", data_dir=str(tmp_path / "d"), health_grace_s=0,
                             keep_images=False, image_roots=[str(roots / "allowed")], allow_models=[itm],
                             preload=[str(tiny_siglip_dir)]))
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", retries=0) as c:
            c.create_collection("k", model=str(tiny_siglip_dir))
            c.upsert("k", [{"image": png_bytes(303, 40, 40), "uri": str(roots / "allowed" / "inside.png")},
                           {"image": png_bytes(304, 40, 40), "uri": str(roots / "outside" / "far.png")}])
            r = c.search("k", text="a cat", top_k=2, rerank_model=itm)
            assert len(r.hits) == 2 and not any(h.HasField("rerank_score") for h in r.hits)
    finally:
        srv.stop(0)


def test_a_symlink_swapped_in_after_indexing_is_not_followed(server, roots):
    image = roots / "allowed" / "swap.png"
    image.write_bytes(png_bytes(305, 40, 40))
    (roots / "outside" / "target.png").write_bytes(png_bytes(305, 40, 40))  # even the same content
    with SearchClient(f"127.0.0.1:{server.port}", retries=0) as c:
        c.create_collection("swaps", model=server.model)
        assert c.upsert("swaps", [{"uri": str(image)}]).upserted == 1
        assert c.search("swaps", text="x", top_k=1, rerank_model=server.itm).hits[0].HasField("rerank_score")
        image.unlink()
        image.symlink_to(roots / "outside" / "target.png")
        hit = c.search("swaps", text="x", top_k=1, rerank_model=server.itm).hits[0]
        assert not hit.HasField("rerank_score")
        assert c.upsert("swaps", [{"uri": str(image)}]).statuses[0].error.endswith(
            "a symbolic link on the way; links are not followed here")
        c.drop_collection("swaps")


# ---- memory per request and per server ------------------------------------------------------------------

def test_big_decoded_images_are_decoded_a_few_at_a_time(server, photos):
    six = [one_bit_png(6000, 6000) for _ in range(6)]  # 36 MP each, a few KB on the wire
    assert sum(map(len, six)) < 200_000
    budget = server.service.pixel_budget
    budget.peak = 0
    with SearchClient(f"127.0.0.1:{server.port}", retries=0, timeout=120) as c:
        _, vectors = c.embed(images=six, collection="photos")
        assert vectors.shape == (6, 32)
        assert budget.used == 0 and 36e6 <= budget.peak <= budget.total  # one at a time under a 40 MP budget
        code, details = code_of(lambda: c.embed(images=[one_bit_png(7000, 7000)], collection="photos"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "49 MP exceeds the limit of 40 MP" in details
        code, details = code_of(lambda: c.caption(server.cap, [png_bytes(1)] * 1025))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 1024" in details


def test_a_spent_budget_queues_then_refuses_with_resource_exhausted(server, photos):
    budget = server.service.pixel_budget
    budget.acquire(int(35e6), None, "the test")
    try:
        with SearchClient(f"127.0.0.1:{server.port}", retries=0) as c:
            started = time.monotonic()
            code, details = code_of(lambda: c.embed(images=[one_bit_png(6000, 6000)], collection="photos",
                                                    timeout=1.0))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later" in details
            assert 0.5 < time.monotonic() - started < 5
            threading.Timer(0.3, budget.release, args=(int(35e6),)).start()  # room comes back while it waits
            assert c.embed(images=[one_bit_png(6000, 6000)], collection="photos", timeout=30)[1].shape == (1, 32)
    finally:
        if budget.used >= int(35e6):
            budget.release(int(35e6))


# ---- FIFOs and other non-files ---------------------------------------------------------------------------

def test_a_fifo_under_an_image_root_is_refused_without_hanging(tmp_path, roots, tiny_siglip_dir):
    fifo = roots / "allowed" / "pipe.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    srv = start(ServerConfig(address="127.0.0.1:0", data_dir=str(tmp_path / "d"), workers=2, health_grace_s=0,
                             image_roots=[str(roots / "allowed")], preload=[str(tiny_siglip_dir)]))
    try:
        with SearchClient(f"127.0.0.1:{srv.port}", retries=0, timeout=10) as c:
            c.create_collection("f", model=str(tiny_siglip_dir))
            results = []
            threads = [threading.Thread(target=lambda: results.append(c.upsert("f", [{"uri": str(fifo)}])))
                       for _ in range(2)]
            [t.start() for t in threads]
            [t.join(15) for t in threads]
            assert len(results) == 2
            assert all("not a regular file (a FIFO)" in r.statuses[0].error for r in results)
            assert c.health() == "SERVING"
    finally:
        srv.stop(0)


# ---- which models a request may name ---------------------------------------------------------------------

def test_models_nobody_allowed_are_not_found(server, photos, tmp_path):
    other = tmp_path / "some-dir"
    other.mkdir()
    with SearchClient(f"127.0.0.1:{server.port}", retries=0) as c:
        for call in (lambda: c.rerank(str(other), png_bytes(1), ["x"]),
                     lambda: c.caption("google/blip-hub-id", [png_bytes(1)]),
                     lambda: c.embed(texts=["x"], model="/etc"),
                     lambda: c.create_collection("nope", model=str(other)),
                     lambda: c.search("photos", text="x", rerank_model="/"),
                     lambda: c.search("photos", text="x", caption_model=str(other))):
            code, details = code_of(call)
            assert code == grpc.StatusCode.NOT_FOUND and "is not served here" in details, details
        assert c.embed(texts=["x"], collection="photos")[0].shape == (1, 32)  # the collection's own encoder
        assert c.embed(texts=["x"], model=server.model)[0].shape == (1, 32)  # preloaded


def test_loaded_models_are_bounded_least_recently_used_first(tiny_siglip_dir, tmp_path):
    import shutil

    from search.models import Models

    copies = []
    for i in range(3):
        copies.append(str(tmp_path / f"m{i}"))
        shutil.copytree(tiny_siglip_dir, copies[-1])
    models = Models(batching=True, allow=copies, max_models=2)
    try:
        first = models.dual(copies[0])
        models.dual(copies[1])
        models.dual(copies[0])  # used again: copies[1] is now the least recent
        models.dual(copies[2])
        assert models.loaded() == [f"dual:{copies[0]}", f"dual:{copies[2]}"]
        evicted_was = models.dual(copies[1])  # loads again, evicting copies[0]
        assert models.loads == 4 and f"dual:{copies[0]}" not in models.loaded()
        assert first.encode_texts(["still answers"]).shape == (1, 32)  # a request holding it finishes
        assert evicted_was.encode_texts(["x"]).shape == (1, 32)
    finally:
        models.close()


# ---- odd inputs are typed errors, never INTERNAL -------------------------------------------------------------

def _odd_requests(rng: random.Random, item_ids: list[int]):
    strings = ["", " ", "x", "a" * 5000, "\u0000", "💥" * 10, "../../etc/passwd", "photos", "nope", "photos\n",
               "meta.x = 1", "width >= AND", "id IN (" + ", ".join(map(str, range(1000))) + ")",
               " AND ".join(["width > 1"] * 500), "id = " + "9" * 5000, "meta.a.b.c.d = 'x'", "NOT NOT NOT id = 1",
               "created >= '2024-13-45'", "caption != \"\"", "(" * 60 + "id = 1" + ")" * 60]
    ints = [0, -1, 1, 3, 10_000, 10_001, 2**31 - 1, -2**31]
    big = [0, -1, 1, 2**63 - 1, -2**63, *item_ids]
    for _ in range(200):
        kind = rng.choice(["search", "search", "search", "embed", "get", "delete", "stats", "rerank", "upsert"])
        if kind == "search":
            r = pb.SearchRequest(collection=rng.choice(["photos", "photos", "nope", ""]), top_k=rng.choice(ints),
                                 filter=rng.choice(strings), nprobe=rng.choice(ints), ef_search=rng.choice(ints),
                                 rerank=pb.RerankOptions(model=rng.choice(["", "", "/x"]), depth=rng.choice(ints)),
                                 include_metadata=rng.random() < 0.5, include_vector=rng.random() < 0.3)
            q = rng.choice(["text", "image", "vector", "item", "none"])
            if q == "text":
                r.text = rng.choice(strings)
            elif q == "image":
                r.image = rng.choice([b"", b"\x89PNG\r\n\x1a\n", os.urandom(64), png_bytes(1), one_bit_png(1, 1)])
            elif q == "vector":
                r.vector.values.extend(rng.choice([[], [float("nan")] * 32, [0.0] * 32, [1e38] * 32, [1.0] * 31,
                                                   [0.5] * 32]))
            elif q == "item":
                r.item_id = rng.choice(big)
            yield "Search", r
        elif kind == "embed":
            yield "Embed", pb.EmbedRequest(collection=rng.choice(["photos", "", "nope"]),
                                           model=rng.choice(["", "/nope"]), texts=rng.sample(strings, 2),
                                           images=[rng.choice([b"", os.urandom(10), png_bytes(2)])])
        elif kind in ("get", "delete"):
            ids = [rng.choice(big) for _ in range(rng.choice([0, 1, 5]))]
            if kind == "get":
                yield "Get", pb.GetRequest(collection=rng.choice(["photos", "nope"]), ids=ids)
            else:
                yield "Delete", pb.DeleteRequest(collection=rng.choice(["nope", ""]), ids=ids)
        elif kind == "stats":
            yield "CollectionStats", pb.CollectionStatsRequest(name=rng.choice(strings))
        elif kind == "rerank":
            yield "Rerank", pb.RerankRequest(model=rng.choice(["", "/nope", "x"]), image=os.urandom(8),
                                             texts=rng.sample(strings, 2))
        else:
            meta = struct_pb2.Struct()
            meta.update(rng.choice([{}, {"": 1}, {"k" * 200: 1}, {"x": "y" * 70000}, {"n": {"m": [1, 2, {"o": None}]}}]))
            item = pb.UpsertItem(uri=rng.choice(strings), image=rng.choice([b"", os.urandom(20), png_bytes(3)]),
                                 metadata=meta)
            yield "Upsert", iter([pb.UpsertRequest(collection=rng.choice(["photos", "nope", ""]), item=item)])


def test_odd_inputs_get_typed_errors_never_internal(server, stub, photos):
    seen = set()
    for method, request in _odd_requests(random.Random(7), photos):
        try:
            getattr(stub, method)(request, timeout=30)
            seen.add("OK")
        except grpc.RpcError as exc:
            assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, request, exc.details())
            assert "SELECT" not in exc.details() and len(exc.details()) < 2000, exc.details()[:300]
            seen.add(exc.code().name)
    assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND"} <= seen
    with SearchClient(f"127.0.0.1:{server.port}", retries=0) as c:
        assert c.health() == "SERVING"


# ---- shutdown --------------------------------------------------------------------------------------------

def _start_cli_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "serve", "--address", "127.0.0.1:0", "--data-dir",
                             str(tmp_path / "data"), *args], stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "server.log", "w"), text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    assert "mmsearch serving on" in line, (line, (tmp_path / "server.log").read_text())
    return proc, int(line.split("127.0.0.1:")[1].split()[0])


def test_sigterm_not_serving_window_then_in_flight_calls_finish(tmp_path, tiny_siglip_dir):
    # a 1.5 s batching window keeps searches in flight while the signal arrives
    proc, port = _start_cli_server(tmp_path, "--batch-wait-ms", "1500", "--workers", "4", "--health-grace", "1.5",
                                   "--allow-model", str(tiny_siglip_dir))
    try:
        with SearchClient(f"127.0.0.1:{port}", retries=0, timeout=60) as c:
            c.create_collection("c", model=str(tiny_siglip_dir))
            c.upsert("c", [{"image": png_bytes(i), "uri": f"u{i}"} for i in range(4)])
            c.embed(texts=["warm", "up"], collection="c")  # a batch of two: the next batch waits the window
            done: dict[int, tuple[int, float]] = {}

            def search(i):
                hits = c.search("c", text=f"in flight {i}", top_k=2).hits
                done[i] = (len(hits), time.monotonic())

            threads = [threading.Thread(target=search, args=(i,)) for i in range(2)]
            [t.start() for t in threads]
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            give_up = time.monotonic() + 20  # a loaded machine may be slow, but never hang the suite
            while (state := c.health()) != "NOT_SERVING":
                assert time.monotonic() < give_up and proc.poll() is None, (state, proc.poll())
                time.sleep(0.01)
            not_serving_at = time.monotonic()
            assert c.list_collections()  # still taking calls inside the window
            [t.join() for t in threads]
            assert [done[i][0] for i in (0, 1)] == [2, 2]
            assert all(at > not_serving_at for _, at in done.values())  # sent before, finished after the signal
            time.sleep(1.5)
            code, _ = code_of(lambda: c.search("c", text="after", top_k=1, timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE
        assert proc.wait(timeout=30) == 0
        assert "mmsearch server stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shutdown_exits_even_when_a_handler_is_stuck(tmp_path):
    script = textwrap.dedent(f"""
        import threading
        from search import service
        from search.config import ServerConfig
        from search.server import serve
        service.Service.list_collections = lambda self: threading.Event().wait()   # never returns
        serve(ServerConfig(address="127.0.0.1:0", data_dir={str(tmp_path / "data")!r}, health_grace_s=0,
                           drain_seconds=1, workers=2))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, cwd=ROOT)
    try:
        port = int(proc.stdout.readline().split("127.0.0.1:")[1].split()[0])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stuck = pb_grpc.SearchServiceStub(channel).ListCollections.future(pb.ListCollectionsRequest())
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "1 request(s) still stuck; exiting anyway" in proc.stdout.read()
        assert stuck.exception(timeout=5) is not None
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- dtype ---------------------------------------------------------------------------------------------

def test_serve_and_query_take_a_dtype(tmp_path, tiny_siglip_dir, capsys):
    import torch

    from search.cli import build_parser, main

    assert build_parser().parse_args(["serve", "--dtype", "bfloat16"]).dtype == "bfloat16"
    srv = start(ServerConfig(address="127.0.0.1:0", data_dir=str(tmp_path / "d"), health_grace_s=0,
                             dtype="bfloat16", preload=[str(tiny_siglip_dir)]))
    try:
        enc = srv.models.dual(str(tiny_siglip_dir))
        assert enc.encoder.dtype == torch.bfloat16
        with SearchClient(f"127.0.0.1:{srv.port}", retries=0) as c:
            got = c.embed(texts=["a red circle"], model=str(tiny_siglip_dir))[0][0]
        want = encoders.load(tiny_siglip_dir).encode_texts(["a red circle"])[0]
        assert float(np.dot(got, want)) > 0.99
    finally:
        srv.stop(0)
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(png_bytes(i))
    data = ["--data-dir", str(tmp_path / "d2")]
    assert main(["index", str(images), "--collection", "c", "--model", str(tiny_siglip_dir), "--workers", "0",
                 "--dtype", "bfloat16", *data]) == 0
    assert main(["query", "a cat", "--collection", "c", "--dtype", "bfloat16", "--json", *data]) == 0
    assert '"hits"' in capsys.readouterr().out
    assert main(["query", "a cat", "--collection", "c", "--dtype", "float16", *data]) == 2  # CUDA only
