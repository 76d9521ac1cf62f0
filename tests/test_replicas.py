"""Serving replicas over one PostgreSQL catalog: a write through any replica is searchable on every replica
at once (each catches its FAISS cache up from the catalog, never rebuilding per write), and a client given
all replicas loses no query when one is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from search.client import SearchClient
from search_helpers import png_bytes

ROOT = Path(__file__).resolve().parent.parent


def start_replica(tmp_path: Path, name: str, db: str, model: Path) -> tuple[subprocess.Popen, int, Path]:
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "serve", "--address", "127.0.0.1:0", "--db", db,
                             "--data-dir", str(tmp_path / name), "--media-dir", str(tmp_path / "media"),
                             "--allow-model", str(model), "--health-grace", "0",
                             "--workers", "8"],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = proc.stdout.readline()
    assert "mmsearch serving on" in line, (line, log.read_text())
    return proc, int(line.split("127.0.0.1:")[1].split()[0]), log


def builds(log: Path) -> int:
    return log.read_text().count("built ")


@pytest.mark.postgres
def test_three_replicas_over_one_catalog(tmp_path, pg_url, tiny_siglip_dir):  # noqa: F811
    replicas = [start_replica(tmp_path, f"r{i}", pg_url, tiny_siglip_dir) for i in range(3)]
    try:
        ports = [port for _, port, _ in replicas]
        clients = [SearchClient(f"127.0.0.1:{port}", retries=0, timeout=30) for port in ports]
        clients[0].create_collection("shared", model=str(tiny_siglip_dir))
        assert clients[1].upsert("shared", [{"image": png_bytes(i), "uri": f"u{i}"} for i in range(10)]).upserted == 10
        for c in clients:  # every replica opens (builds) its cache once
            assert len(c.search("shared", text="x", top_k=20).hits) == 10
        before = [builds(log) for _, _, log in replicas]

        for writer in range(3):  # a write through each replica in turn, read on all three at once
            uri = f"late-{writer}"
            status = clients[writer].upsert("shared", [{"image": png_bytes(100 + writer), "uri": uri}]).statuses[0]
            written = time.monotonic()
            for c in clients:
                while uri not in {h.uri for h in c.search("shared", text="x", top_k=50).hits}:
                    assert time.monotonic() - written < 1.0, "a write was not visible on a replica within 1 s"
                    time.sleep(0.01)
            assert clients[(writer + 1) % 3].delete("shared", [status.id]) == 1
            for c in clients:
                assert uri not in {h.uri for h in c.search("shared", text="x", top_k=50).hits}
        assert [builds(log) for _, _, log in replicas] == before, "a replica rebuilt its index for a write"

        # one client over all three: kill one replica mid-stream, lose nothing
        results, errors = [], []
        with SearchClient(",".join(f"127.0.0.1:{p}" for p in ports), retries=6, backoff=0.05, timeout=30) as all3:
            def stream():
                for i in range(120):
                    try:
                        results.append(len(all3.search("shared", text=f"q{i}", top_k=5).hits))
                    except Exception as exc:  # noqa: BLE001 - counted below
                        errors.append(exc)
                    time.sleep(0.005)

            thread = threading.Thread(target=stream)
            thread.start()
            time.sleep(0.2)
            replicas[0][0].send_signal(signal.SIGKILL)
            thread.join()
        assert errors == [] and results == [5] * 120
        for c in clients:
            c.close()
    finally:
        for proc, _, _ in replicas:
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _ in replicas:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
