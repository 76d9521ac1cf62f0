"""Plumbing shared by the benchmarks: import paths, timing, child processes, result tables.

Import it first (`import harness`): it takes bench/ off the import path, because bench/encoders.py
is named like the `encoders` package, and puts the repository and tests/ (tiny-checkpoint helpers) on it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
for _path in (str(REPO / "tests"), str(REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def default_workdir() -> str:
    """Where benchmark checkpoints and files are cached between runs."""
    return os.path.join(tempfile.gettempdir(), "mmsearch-bench")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def alternate(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds per named call, after one warm-up each. The calls alternate within a
    round, so load changes on a shared machine hit every implementation alike."""
    for fn in calls.values():
        fn()
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def run_child(script: str | Path, **options) -> dict:
    """Run `python script --child --key value ...` and return the JSON object on its last stdout line.
    Children isolate peak RSS and thread pools per measurement."""
    cmd = [sys.executable, str(script), "--child"]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rate_row(family: str, task: str, dtype: str, ours: float, reference: float | None, **extra) -> dict:
    """One table row; the ratio comes from the unrounded rates."""
    row = dict(family=family, task=task, dtype=dtype, ours=float(f"{ours:.3g}"),
               reference=None if reference is None else float(f"{reference:.3g}"),
               ratio=None if not reference else round(ours / reference, 2))
    row.update({k: (round(v, 5) if isinstance(v, float) else v) for k, v in extra.items()})
    return row


def print_table(rows: list[dict]) -> None:
    header = f"{'family':<10} {'task':<24} {'dtype':<6} {'ours':>10} {'transformers':>13} {'ratio':>6}  notes"
    print(header)
    print("-" * len(header))
    skip = {"family", "task", "dtype", "ours", "reference", "ratio"}
    for r in rows:
        notes = ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip)
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        reference = "" if r.get("reference") is None else r["reference"]
        print(f"{r['family']:<10} {r['task']:<24} {r['dtype']:<6} {r['ours']:>10} {reference:>13} {ratio:>6}  {notes}",
              flush=True)


def write_results(name: str, rows: list[dict], **info) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, **info, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return out


def serve_cli(args: list[str], log_path: str | Path) -> tuple[subprocess.Popen, str]:
    """`mmsearch serve ARGS` in its own process (this checkout's code); returns it and its first stdout line
    ("mmsearch serving on ..."), once it says so. Its log goes to `log_path`."""
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "serve", *args], stdout=subprocess.PIPE,
                            stderr=open(log_path, "w"), text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    line = proc.stdout.readline()
    if "serving on" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}; see {log_path}")
    return proc, line
