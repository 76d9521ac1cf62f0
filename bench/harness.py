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


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (os.getloadavg), recorded beside every comparison."""
    return [round(x, 2) for x in os.getloadavg()]


def compare(calls: dict[str, Callable[[], object]], items: int, rounds: int, against: list[tuple[str, str]],
            warmup: int = 1) -> dict:
    """Interleave `calls` (see `interleave`) and report each one's rate (`items` per median second) and, for
    each (faster, slower) pair in `against`, the median paired ratio with its spread, plus the load averages
    before and after. This is how every benchmark compares two implementations on a shared machine."""
    before = load_average()
    seconds = interleave(calls, rounds, warmup)
    return {"rates": {name: items / median(s) for name, s in seconds.items()},
            "ratios": {f"{a}/{b}": paired(seconds[a], seconds[b]) for a, b in against},
            "seconds": {name: [round(x, 4) for x in s] for name, s in seconds.items()},
            "loadavg_before": before, "loadavg_after": load_average()}


def compare_row(family: str, task: str, dtype: str, result: dict, goal: float | None = None, **extra) -> dict:
    """One table row from a `compare` result whose calls are "ours" and "transformers" (same dtype) and, for
    a bf16 row, "transformers_fp32": rates, the like-for-like ratio (median, min, max), the ratio against
    transformers fp32 beside it, and whether the goal (on the like-for-like median) is met."""
    rates, ratios = result["rates"], result["ratios"]
    like = ratios["ours/transformers"]
    row = dict(family=family, task=task, dtype=dtype, ours=float(f"{rates['ours']:.3g}"),
               reference=float(f"{rates['transformers']:.3g}"), ratio=like["median"], ratio_min=like["min"],
               ratio_max=like["max"], rounds=like["rounds"])
    if "ours/transformers_fp32" in ratios:
        vs = ratios["ours/transformers_fp32"]
        row.update(reference_fp32=float(f"{rates['transformers_fp32']:.3g}"), ratio_vs_fp32=vs["median"],
                   ratio_vs_fp32_min=vs["min"], ratio_vs_fp32_max=vs["max"])
    if goal is not None:
        row.update(goal=goal, met=like["median"] >= goal)
    row.update({k: (round(v, 5) if isinstance(v, float) else v) for k, v in extra.items()})
    row.update(seconds=result["seconds"], loadavg_before=result["loadavg_before"],
               loadavg_after=result["loadavg_after"])
    return row


def reference_calls(dtype: str, make: Callable[[object], Callable[[], object]]) -> dict[str, Callable[[], object]]:
    """The transformers side of a comparison: `make(torch_dtype)` builds a call for a model loaded in that
    dtype; fp32 rows get "transformers", bf16 rows "transformers" in bf16 (like for like) and
    "transformers_fp32" beside it."""
    import torch

    if dtype == "fp32":
        return {"transformers": make(torch.float32)}
    return {"transformers": make(torch.bfloat16), "transformers_fp32": make(torch.float32)}


def against(calls: dict) -> list[tuple[str, str]]:
    """The ratios a comparison row reports: ours against each transformers call present."""
    return [("ours", name) for name in ("transformers", "transformers_fp32") if name in calls]


def processor_inputs(processor, torch_dtype, **kwargs):
    """A transformers processor's tensors for a model loaded in `torch_dtype` (pixel values cast to it)."""
    inputs = processor(return_tensors="pt", **kwargs)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(torch_dtype)
    return inputs


DTYPE_GOALS = {"fp32": 1.0, "bf16": 1.2}  # issue 12: ours >= transformers in fp32, >= 1.2x in bf16 like for like


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


def child_main(child: Callable[[object], dict]) -> None:
    """The child side of `run_child`: parse its `--key value` options (ints where they are ints) into a
    namespace, run `child` on it and print its JSON result as the last line."""
    import argparse

    argv, options = sys.argv[1:], {}
    if argv[:1] != ["--child"]:
        raise SystemExit(f"{sys.argv[0]} is run by bench/encoders.py (python bench/encoders.py --families ...)")
    for key, value in zip(argv[1::2], argv[2::2]):
        options[key.lstrip("-").replace("-", "_")] = int(value) if value.lstrip("-").isdigit() else value
    print(json.dumps(child(argparse.Namespace(**options))))


def print_table(rows: list[dict]) -> None:
    header = (f"{'family':<10} {'task':<30} {'dtype':<5} {'ours':>8} {'transformers':>12} {'ratio [min-max]':>19}"
              f" {'vs fp32':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        if r.get("ratio_min") is not None:
            ratio += f" [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]"
        vs = "" if r.get("ratio_vs_fp32") is None else f"{r['ratio_vs_fp32']:.2f}x"
        reference = "" if r.get("reference") is None else r["reference"]
        print(f"{r['family']:<10} {r['task']:<30} {r['dtype']:<5} {r['ours']:>8} {reference:>12} {ratio:>19} {vs:>7}",
              flush=True)


def command_line() -> str:
    """The command that produced a result, as a reader would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def write_results(name: str, rows: list[dict], **info) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"command": command_line(), "machine": {"cpus": os.cpu_count(),
                                                                      "loadavg_at_end": load_average()},
                               **info, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return out


def serve_cli(args: list[str], log_path: str | Path, *, repo: str | Path = REPO) -> tuple[subprocess.Popen, str]:
    """`mmsearch serve ARGS` in its own process (this checkout's code, or that of `repo`: a baseline to
    compare with); returns it and its first stdout line ("mmsearch serving on ..."), once it says so. Its log
    goes to `log_path`."""
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "serve", *args], stdout=subprocess.PIPE,
                            stderr=open(log_path, "w"), text=True, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)))
    line = proc.stdout.readline()
    if "serving on" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}; see {log_path}")
    return proc, line


def start_server(data_dir: Path, log: Path, *flags: str, repo: str | Path = REPO):
    """`mmsearch serve` on a free loopback gRPC port with `data_dir`: (process, port)."""
    proc, line = serve_cli(["--address", "127.0.0.1:0", "--data-dir", str(data_dir), *flags], log, repo=repo)
    return proc, int(line.split("127.0.0.1:")[1].split()[0])


def save_json(path: str | Path, out: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"command": command_line(), **out}
    out.setdefault("machine", {"cpus": os.cpu_count()}).setdefault("loadavg_at_end", load_average())
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
