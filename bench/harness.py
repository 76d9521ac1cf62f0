"""Plumbing shared by the benchmarks: import paths, timing, child processes, result tables.

Import it first (`import harness`): it moves bench/ to the end of the import path, because bench/encoders.py
is named like the `encoders` package (the other bench modules stay importable), and puts the repository and
tests/ (tiny-checkpoint helpers) in front.
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
# the code under test: this checkout, or another tree a Worker was started on (bench/encoders_revisions.py)
CODE = Path(os.environ.get("MMSEARCH_BENCH_CODE") or REPO)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
for _path in (str(REPO / "tests"), str(CODE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
sys.path.append(str(HERE))


def default_workdir() -> str:
    """Where benchmark checkpoints and files are cached between runs."""
    return os.path.join(tempfile.gettempdir(), "mmsearch-bench")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleave(calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each named call in each of `rounds` rounds, after `warmup` untimed calls each. Every round
    runs every call once, on the same inputs, the order turning by one place per round (A B C, B C A, ...),
    so drift on a shared machine and order effects fall on all of them alike; compare them round by round
    (`paired`)."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def paired(faster: list[float], slower: list[float]) -> dict:
    """Per-round speed ratios slower_seconds / faster_seconds (> 1: `faster` is faster) of two series from the
    same `interleave` run: their median and spread."""
    ratios = sorted(b / a for a, b in zip(faster, slower))
    if not ratios:
        raise ValueError("no rounds")
    n = len(ratios)
    median = ratios[n // 2] if n % 2 else (ratios[n // 2 - 1] + ratios[n // 2]) / 2
    return {"median": round(median, 3), "min": round(ratios[0], 3), "max": round(ratios[-1], 3), "rounds": n}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


class Worker:
    """A child process that holds one implementation (e.g. our code at another revision: its own PYTHONPATH)
    and runs its timed call on request, so calls in different processes can still be interleaved.

    The child is `python script --worker ARGS...`; it loads, prints one JSON line (its info), then answers each
    "run" line on stdin with one JSON line {"seconds": ...} and exits on "quit" (see `serve_worker`)."""

    def __init__(self, script: str | Path, args: list[str], code: str | Path | None = None):
        env = dict(os.environ)
        if code is not None:  # import encoders (and the rest of the project) from this tree
            env["MMSEARCH_BENCH_CODE"] = str(code)
            env["PYTHONPATH"] = str(code)
        self.proc = subprocess.Popen([sys.executable, str(script), "--worker", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args[2:]} died:\n{self.proc.stderr.read()[-3000:]}")
        return json.loads(line)

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._reply()["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def serve_worker(call: Callable[[], object], **info) -> None:
    """The child side of `Worker`: report `info`, then time `call` once per "run" line."""
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            return
        start = time.perf_counter()
        call()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


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


def start_server(data_dir: Path, log: Path, *flags: str):
    """`mmsearch serve` on a free loopback gRPC port with `data_dir`: (process, port)."""
    proc, line = serve_cli(["--address", "127.0.0.1:0", "--data-dir", str(data_dir), *flags], log)
    return proc, int(line.split("127.0.0.1:")[1].split()[0])


def save_json(path: str | Path, out: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
