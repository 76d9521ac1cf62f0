"""Asking the images: the Ask RPC, SearchRequest.ask (an answer per hit) and `mmsearch ask`, over BLIP VQA,
with the answers of encoders.load_answerer (itself token-identical to transformers)."""

from __future__ import annotations

import json

import grpc
import pytest

import encoders
from encoders.preprocess import load_image
from search.client import SearchClient
from search.config import ServerConfig
from search.server import start
from search_helpers import png_bytes


@pytest.fixture(scope="module")
def vqa_dir(tmp_path_factory):
    from tiny_blip import make_tiny_blip

    return make_tiny_blip(tmp_path_factory.mktemp("vqa") / "vqa", "vqa")[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_siglip_dir, vqa_dir, tiny_blip_dirs):
    root = tmp_path_factory.mktemp("ask")
    srv = start(ServerConfig(address="127.0.0.1:0", data_dir=str(root / "data"), health_grace_s=0,
                             preload=[str(tiny_siglip_dir)], allow_models=[str(vqa_dir), str(tiny_blip_dirs[1])]))
    srv.vqa = str(vqa_dir)
    with SearchClient(f"127.0.0.1:{srv.port}", retries=0) as c:
        c.create_collection("photos", model=str(tiny_siglip_dir))
        srv.ids = [s.id for s in c.upsert("photos", [{"image": png_bytes(i, 40, 30 + i), "uri": f"p{i}"}
                                                     for i in range(5)]).statuses]
    yield srv
    srv.stop(0)


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_ask_about_images_and_items(server):
    answerer = encoders.load_answerer(server.vqa)
    images = [png_bytes(i, 40, 30 + i) for i in range(3)]
    want = answerer.answer([load_image(b) for b in images], ["is there a dog?"] * 3)
    with SearchClient(f"127.0.0.1:{server.port}", retries=0) as c:
        assert c.ask(server.vqa, "is there a dog?", images=images) == want
        got = c.ask(server.vqa, "is there a dog?", images=images[:1], collection="photos", item_ids=server.ids[1:3])
        assert got == [want[0], want[1], want[2]]  # items 1 and 2 were made from images 1 and 2
        beams = answerer.answer([load_image(images[0])], ["what colour?"], num_beams=3, max_new_tokens=5)
        assert c.ask(server.vqa, "what colour?", images=images[:1], num_beams=3, max_new_tokens=5) == beams
        for call, code, words in [
            (lambda: c.ask(server.vqa, "  ", images=images), grpc.StatusCode.INVALID_ARGUMENT, "question is empty"),
            (lambda: c.ask(server.vqa, "x"), grpc.StatusCode.INVALID_ARGUMENT, "nothing to ask about"),
            (lambda: c.ask(server.vqa, "x", item_ids=[1]), grpc.StatusCode.INVALID_ARGUMENT, "need their collection"),
            (lambda: c.ask(server.vqa, "x", collection="photos", item_ids=[99999]), grpc.StatusCode.NOT_FOUND, "99999"),
            (lambda: c.ask(server.vqa, "x", images=[b"junk"]), grpc.StatusCode.INVALID_ARGUMENT, "images[0]"),
            (lambda: c.ask(server.vqa, "x", images=images, num_beams=99), grpc.StatusCode.INVALID_ARGUMENT, "num_beams"),
            (lambda: c.ask("/not/allowed", "x", images=images), grpc.StatusCode.NOT_FOUND, "not served here"),
        ]:
            got_code, details = code_of(call)
            assert got_code == code and words in details, details


def test_search_answers_a_question_about_each_hit(server, tiny_blip_dirs):
    answerer = encoders.load_answerer(server.vqa)
    with SearchClient(f"127.0.0.1:{server.port}", retries=0) as c:
        r = c.search("photos", text="a cat", top_k=3, ask="is there a dog?", ask_model=server.vqa)
        assert len(r.hits) == 3 and r.timing.ask_ms > 0
        by_uri = {f"p{i}": png_bytes(i, 40, 30 + i) for i in range(5)}
        for hit in r.hits:
            assert hit.answer == answerer.answer([load_image(by_uri[hit.uri])], ["is there a dog?"])[0]
        assert not c.search("photos", text="a cat", top_k=1).hits[0].answer
        code, details = code_of(lambda: c.search("photos", text="x", ask="is it red?"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "ask_model" in details
        code, details = code_of(lambda: c.search("photos", text="x", ask="q", ask_model=str(tiny_blip_dirs[1])))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "captioning model" in details


def test_cli_ask(server, tmp_path, capsys):
    from search.cli import main

    path = tmp_path / "q.png"
    path.write_bytes(png_bytes(7))
    want = encoders.load_answerer(server.vqa).answer([load_image(path)], ["how many?"])[0]
    assert main(["ask", "how many?", "--model", server.vqa, "--image", str(path), "--json",
                 "--data-dir", str(tmp_path / "d")]) == 0
    assert json.loads(capsys.readouterr().out) == [{"input": str(path), "answer": want}]
    assert main(["ask", "how many?", "--model", server.vqa, "--image", str(path), "--server",
                 f"127.0.0.1:{server.port}"]) == 0
    assert capsys.readouterr().out.strip() == f"{path}\t{want}"
    assert main(["ask", "how many?", "--model", server.vqa, "--data-dir", str(tmp_path / "d")]) == 2
