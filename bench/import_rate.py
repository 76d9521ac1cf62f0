"""`mmsearch import` rows/s on SQLite (issue 13's import goal, >= 50,000 rows/s), this checkout against another
one (e.g. the commit before a change), interleaved in time.

    python bench/import_rate.py --against CHECKOUT [--rows 300000] [--rounds 3] [--out bench/results/import_rate.json]

Data: bench/scale.py's clustered 768-d rows with their metadata, in clip-retrieval's layout (100,000-row
shards, float16 vectors), written once and imported by each checkout into a fresh data dir per run
(`--index flat`: the figure is the catalog writes, which the CLI reports apart from the index build). Each
round (after `--warmup` untimed ones) runs both checkouts, the order turning every round; the result is each one's median rows/s and the
median paired ratio (ours / against) with its spread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import harness
from harness import load_average, median, paired, save_json
from scale import GOALS, import_cli, make_model, write_layout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, metavar="CHECKOUT", help="the other checkout of the project")
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    ap.add_argument("--workdir", default=os.path.join(harness.default_workdir(), "import_rate"))
    ap.add_argument("--out", default=str(harness.RESULTS / "import_rate.json"))
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work)
    layout = work / f"layout-{args.rows}"
    write_layout(layout, args.rows)
    codes = {"ours": harness.REPO, "against": Path(args.against).resolve()}
    runs: list[dict] = []
    before = load_average()
    # untimed warm-up rounds first: the layout just written is still being flushed to disk, and the first
    # import of a process tree pays for cold file caches
    for r in range(-args.warmup, args.rounds):
        for name in (list(codes) if r % 2 == 0 else list(codes)[::-1]):
            data = work / f"data-{name}"
            shutil.rmtree(data, ignore_errors=True)
            out = import_cli(model, layout, data, None, code=codes[name], flags=["--index", "flat"])
            shutil.rmtree(data, ignore_errors=True)
            run = {"round": r, "code": name, "rows": out["added"], "import_s": out["import_s"],
                   "rows_per_s": out["import_rows_per_s"], "loadavg": load_average()}
            print(run, flush=True)
            if r >= 0:
                runs.append(run)
    summary = {}
    for name in codes:
        rates = [x["rows_per_s"] for x in runs if x["code"] == name]
        summary[name] = {"rows_per_s_median": round(median(rates)), "min": min(rates), "max": max(rates)}
    ratio = paired([x["import_s"] for x in runs if x["code"] == "ours"],
                   [x["import_s"] for x in runs if x["code"] == "against"])
    goal = GOALS["import_rows_per_s_min"]
    print(f"ours {summary['ours']}, against {summary['against']}; ours/against {ratio}; goal {goal} rows/s: "
          f"{'met' if summary['ours']['rows_per_s_median'] >= goal else 'MISSED'}")
    save_json(args.out, {"settings": {"rows": args.rows, "rounds": args.rounds, "warmup_rounds": args.warmup,
                                      "dim": 768, "catalog": "sqlite",
                                      "against": str(codes["against"])},
                         "machine": {"cpus": os.cpu_count(), "loadavg_before": before},
                         "summary": summary, "ours_over_against": ratio,
                         "goal": {"rows_per_s": goal, "met": summary["ours"]["rows_per_s_median"] >= goal},
                         "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
