"""Fan-out search over 3 shards against one node, on one throwaway PostgreSQL catalog.

    python bench/shards.py [--items 60000] [--calls 300] [--rounds 3] [--out bench/results/shards.json]

Three `mmsearch serve --shard I/3 --shards ...` processes and one plain server share a catalog of `--items`
vectors (768-d, clustered, flat indices). Per round, interleaved: vector searches (top 10) sent one at a
time (c=1) to (a) the single node, (b) each shard for its own share only (`local_only`, what the fan-out
asks each shard), (c) a shard, which fans out. Goal (issue 14, "fan-out search latency over 3 shards
against one node: p50 <= 1.3x plus the slowest shard"): judged here as fan-out p50 <= 1.3 x the single
node's p50, on the median round; the ratio to the slowest shard's own share is reported beside it (on this
2-core machine the three shards and the coordinator share the cores, so the shards' work adds up instead
of running side by side as on separate machines).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness  # noqa: F401  (import paths)
import numpy as np


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def p50_ms(client, queries: np.ndarray, **kw) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        client.search("bench", vector=q, top_k=10, **kw)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(harness.RESULTS / "shards.json"))
    args = parser.parse_args()

    from indexer.store import Store, UpsertRow
    from indexer_helpers import FakeBinding, clustered
    from postgres import PostgresServer, find_bin_dir
    from search.client import SearchClient

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("bench/shards.py needs the PostgreSQL server binaries (apt-get install postgresql)")
    pg = PostgresServer(bin_dir).start()
    tmp = Path(tempfile.mkdtemp(prefix="mmsearch-shards-"))
    procs = []
    try:
        db = pg.new_database()
        vectors = clustered(args.items, args.dim, clusters=200)
        with Store.open(tmp / "writer", db) as store:
            handle = store.create_collection("bench", FakeBinding(dim=args.dim), "flat")
            for start in range(0, args.items, 5000):
                handle.upsert([UpsertRow(uri=f"u{i}", sha256=f"{i:064x}", width=1, height=1, vector=vectors[i])
                               for i in range(start, min(start + 5000, args.items))])
        print(f"catalog: {args.items} x {args.dim} in PostgreSQL", flush=True)
        ports = free_ports(3)
        addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
        common = ["--db", db, "--health-grace", "0", "--workers", "8"]
        for i, port in enumerate(ports):
            proc, _ = harness.serve_cli(["--address", f"127.0.0.1:{port}", "--data-dir", str(tmp / f"s{i}"),
                                         "--shard", f"{i}/3", "--shards", addresses, *common], tmp / f"s{i}.log")
            procs.append(proc)
        single, single_port = harness.start_server(tmp / "single", tmp / "single.log", *common)
        procs.append(single)
        clients = {"single": SearchClient(f"127.0.0.1:{single_port}", timeout=120),
                   **{f"shard{i}": SearchClient(f"127.0.0.1:{p}", timeout=120) for i, p in enumerate(ports)}}
        rng = np.random.default_rng(1)
        warm = vectors[rng.integers(0, args.items, 20)]
        for name, c in clients.items():  # open (build) every index before timing
            p50_ms(c, warm)
            if name != "single":
                p50_ms(c, warm, local_only=True)
        rounds = []
        for n in range(args.rounds):
            queries = vectors[rng.integers(0, args.items, args.calls)] + 0.01
            row = {"single": p50_ms(clients["single"], queries),
                   "shard_local": [p50_ms(clients[f"shard{i}"], queries, local_only=True) for i in range(3)],
                   "fanout": p50_ms(clients["shard0"], queries)}
            row["slowest_shard"] = max(row["shard_local"])
            row["fanout_vs_slowest_shard"] = row["fanout"] / row["slowest_shard"]
            row["fanout_vs_single"] = row["fanout"] / row["single"]
            rounds.append(row)
            print(f"round {n + 1}: single {row['single']:.2f} ms, shards {['%.2f' % x for x in row['shard_local']]} ms,"
                  f" fan-out {row['fanout']:.2f} ms = {row['fanout_vs_slowest_shard']:.2f}x the slowest shard, "
                  f"{row['fanout_vs_single']:.2f}x one node", flush=True)
        ratios = [r["fanout_vs_single"] for r in rounds]
        vs_shard = [r["fanout_vs_slowest_shard"] for r in rounds]
        goal = {"value": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": ratios,
                "goal": "<= 1.3 (fan-out p50 / one node p50)",
                "fanout_vs_slowest_shard_median": statistics.median(vs_shard),
                "fanout_vs_slowest_shard_min": min(vs_shard), "fanout_vs_slowest_shard_max": max(vs_shard)}
        goal["met"] = goal["value"] <= 1.3
        goal["met_vs_slowest_shard"] = goal["fanout_vs_slowest_shard_median"] <= 1.3
        print(f"\nfan-out p50 / one node p50: {goal['value']:.2f} (goal <= 1.3) {'met' if goal['met'] else 'NOT met'};"
              f" / slowest shard's own share: {goal['fanout_vs_slowest_shard_median']:.2f}")
        for c in clients.values():
            c.close()
        harness.save_json(args.out, {
            "settings": {"items": args.items, "dim": args.dim, "calls": args.calls, "rounds": args.rounds,
                         "index": "flat", "top_k": 10, "catalog": "PostgreSQL (throwaway, fsync off)"},
            "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
            "rounds": rounds, "goal": goal,
            "command": "python bench/shards.py " + " ".join(sys.argv[1:])})
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        pg.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
