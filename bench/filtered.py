"""Filtered search, this checkout against a baseline checkout, on one built scale catalog (issue 13).

    python bench/scale.py --sizes 1000000 --keep --workdir W          # builds W/data-1000000-sqlite
    git archive main | tar -x -C BASE                                   # the baseline's code
    python bench/filtered.py --data W/data-1000000-sqlite --baseline BASE [--rounds 5] [--queries 30]
                             [--out bench/results/filtered_ab.json]

Two `mmsearch serve` processes on the same data dir (this checkout's code and the baseline's), each warmed
up; then, round by round, each of scale.py's nine filters (0.1 / 1 / 10 % for `meta.K = v`, a `meta` range
and a `width` range) runs its queries (scale.py's, the same for both) on one server and then the other, the
order turning every round. Per filter and server: p50 / p90 over all rounds, the top-10 checked against
brute force over the matching items (scale.py: ground_truth), and the paired ratio baseline p50 / this p50
per round (median, min, max).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np

import harness
import scale


def _run(client, name: str, expr: str, qs, truth) -> tuple[list[float], int]:
    lat, equal = [], 0
    for q, want in zip(qs, truth):
        t0 = time.perf_counter()
        hits = client.search("scale", vector=q, top_k=scale.K, filter=expr).hits
        lat.append(time.perf_counter() - t0)
        equal += [h.id for h in hits] == [int(i) for i in want if i >= 0]
    return lat, equal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a data dir built by bench/scale.py --keep")
    ap.add_argument("--baseline", required=True, help="a checkout of the code to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=30, help="per filter (scale.py's --filtered-queries)")
    ap.add_argument("--only", help="comma-separated filter names of scale.py (e.g. tag=many,width>=9000)")
    ap.add_argument("--out", default=str(harness.RESULTS / "filtered_ab.json"))
    args = ap.parse_args()
    from indexer.store import Store
    from search.client import SearchClient

    chosen = [f for f in scale.FILTERS if not args.only or f[0] in args.only.split(",")]
    data = Path(args.data)
    with Store(data) as store:
        n = store.collection("scale").count()
    q_plain = scale.queries(1)
    q_filtered = {name: scale.draw(np.random.default_rng(2000 + i), args.queries, scale.centers())
                  for i, (name, *_rest) in enumerate(scale.FILTERS) if any(name == f[0] for f in chosen)}
    t0 = time.perf_counter()
    _, truth = scale.ground_truth(data, None, n, q_plain, q_filtered)
    print(f"ground truth in {time.perf_counter() - t0:.0f}s", flush=True)
    servers = {}
    try:
        for label, repo in (("this", harness.REPO), ("baseline", Path(args.baseline))):
            proc, port = harness.start_server(data, data.parent / f"filtered-{label}.log", repo=repo)
            servers[label] = (proc, SearchClient(f"127.0.0.1:{port}", timeout=600))
        for _label, (_proc, client) in servers.items():  # open the index, warm both up alike
            for q in scale.queries(20):
                client.search("scale", vector=q, top_k=scale.K)
            for name, _kind, _sel, expr in chosen:
                _run(client, name, expr, q_filtered[name][:3], truth[name][:3])
        lat = {(label, name): [] for label in servers for name, *_ in chosen}
        per_round = {(label, name): [] for label in servers for name, *_ in chosen}
        equal = {(label, name): 0 for label in servers for name, *_ in chosen}
        labels = list(servers)
        for r in range(args.rounds):
            for name, _kind, _sel, expr in chosen:
                for label in labels[r % 2:] + labels[:r % 2]:
                    got, eq = _run(servers[label][1], name, expr, q_filtered[name], truth[name])
                    lat[label, name] += got
                    per_round[label, name].append(harness.median(got))
                    equal[label, name] += eq
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    finally:
        for proc, client in servers.values():
            client.close()
            proc.terminate()
            proc.wait(timeout=120)
    rows = []
    for name, kind, selectivity, expr in chosen:
        row = {"filter": expr, "kind": kind, "selectivity": selectivity}
        for label in servers:
            xs = lat[label, name]
            row[label] = {"p50_ms": round(harness.median(xs) * 1000, 2),
                          "p90_ms": round(float(np.percentile(xs, 90)) * 1000, 2),
                          "top10_equal_brute_force": f"{equal[label, name]}/{len(xs)}"}
        row["speedup_baseline_over_this"] = harness.paired(per_round["this", name], per_round["baseline", name])
        rows.append(row)
        print(f"{expr:<22} this p50 {row['this']['p50_ms']:>7} ms ({row['this']['top10_equal_brute_force']})  "
              f"baseline {row['baseline']['p50_ms']:>7} ms ({row['baseline']['top10_equal_brute_force']})  "
              f"x{row['speedup_baseline_over_this']['median']}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=harness.REPO).stdout.strip()
    harness.save_json(args.out, {"items": n, "this_commit": commit, "baseline": str(args.baseline),
                                 "baseline_commit": _baseline_commit(Path(args.baseline)),
                                 "rounds": args.rounds, "queries_per_filter_per_round": args.queries,
                                 "goal_filtered_p50_ms_max": scale.GOALS["filtered_p50_ms_max"], "rows": rows})


def _baseline_commit(repo: Path) -> str | None:
    marker = repo / "COMMIT"  # written beside a `git archive` export (it has no .git)
    if marker.exists():
        return marker.read_text().strip()
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=repo)
    return out.stdout.strip() or None


if __name__ == "__main__":
    main()
