"""Shards over one PostgreSQL catalog: each server's index holds its share of the items (id % N), a Search
sent to any of them fans out and equals a single node's exact search (rerank run once on the merged
candidates), and a shard that does not answer is a clear error, or a partial result when asked for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from search.client import SearchClient
from search_helpers import item_meta, png_bytes

ROOT = Path(__file__).resolve().parent.parent


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def serve(tmp_path: Path, name: str, port: int, db: str, *flags: str) -> subprocess.Popen:
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "serve", "--address", f"127.0.0.1:{port}",
                             "--db", db, "--data-dir", str(tmp_path / name), "--media-dir", str(tmp_path / "media"),
                             "--health-grace", "0", *flags],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = proc.stdout.readline()
    assert "mmsearch serving on" in line, (line, log.read_text())
    return proc


@pytest.mark.postgres
def test_three_shards_answer_like_one_node(tmp_path, pg_url, tiny_siglip_dir, tiny_blip_dirs):  # noqa: F811
    itm = str(tiny_blip_dirs[0])
    allow = ["--allow-model", str(tiny_siglip_dir), "--allow-model", itm]
    ports = free_ports(4)
    addresses = ",".join(f"127.0.0.1:{p}" for p in ports[:3])
    procs = [serve(tmp_path, f"shard{i}", ports[i], pg_url, "--shard", f"{i}/3", "--shards", addresses, *allow)
             for i in range(3)]
    procs.append(serve(tmp_path, "single", ports[3], pg_url, *allow))  # the reference: one node, every item
    clients = [SearchClient(f"127.0.0.1:{p}", retries=0, timeout=60) for p in ports]
    try:
        clients[0].create_collection("big", model=str(tiny_siglip_dir), index="flat")
        items = [{"image": png_bytes(i, 30 + i % 7, 30), "uri": f"u{i}", "metadata": item_meta(i)} for i in range(30)]
        ids = [s.id for s in clients[1].upsert("big", items).statuses]
        shares = [clients[i].collection_stats("big").indexed for i in range(3)]
        assert shares == [sum(1 for x in ids if x % 3 == i) for i in range(3)] and sum(shares) == 30
        assert clients[3].collection_stats("big").indexed == 30

        def top(client, **kw):
            kw = {"top_k": 10, **kw}
            return [(h.id, round(h.score, 5), None if not h.HasField("rerank_score") else round(h.rerank_score, 5))
                    for h in client.search("big", **kw).hits]

        for kw in (dict(text="a red circle"), dict(text="two squares", filter='meta.color = "red" OR meta.i < 5'),
                   dict(item_id=ids[4]), dict(text="a photo", rerank_model=itm, rerank_depth=12),
                   dict(text="a photo", top_k=4, offset=4)):
            want = top(clients[3], **kw)
            assert len(want) >= 4
            for c in clients[:3]:
                assert top(c, **kw) == want, kw
        own = clients[1].search("big", text="x", top_k=30, local_only=True).hits
        assert sorted(h.id for h in own) == sorted(x for x in ids if x % 3 == 1)

        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait()
        with pytest.raises(grpc.RpcError) as info:
            clients[0].search("big", text="a red circle", top_k=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "shard 2/3" in info.value.details()
        partial = clients[0].search("big", text="a red circle", top_k=10, allow_partial=True)
        assert list(partial.missing_shards) == [2] and partial.hits
        assert all(h.id % 3 != 2 for h in partial.hits)
        survivors = [h for h in clients[3].search("big", text="a red circle", top_k=30).hits if h.id % 3 != 2][:10]
        assert [h.id for h in partial.hits] == [h.id for h in survivors]
    finally:
        for c in clients:
            c.close()
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
