"""Serving benchmark: text Search latency and QPS at concurrency 1, 8 and 32, batching on vs off, next to
the text tower's own batched throughput measured in the same run.

    python bench/serving.py [--requests-per-client 8] [--c1-requests 100] [--rounds 2] [--out bench/results/serving.json]

The model is the base-size SigLIP (transformers' SiglipConfig defaults, random weights) saved to a temp
dir and loaded through encoders.load. The server runs in its own process (`mmsearch serve`), so client
threads do not share its GIL; clients are threads in this process, each with its own channel, each
sending distinct texts back to back (closed loop).

This machine's speed drifts by 10-30% over minutes (a shared VM), so the concurrency-32 batched run is
done in `--rounds` rounds, each bracketed by measurements of the tower (server idle): a round's ratio uses
the mean of the tower just before and just after it, and the goal is judged on the median round (the
lower of the middle two when the count is even).

Goals checked (and written to the JSON):
  qps_c32_batched >= 0.9 x tower texts/s (batch 32)
  p50 at c=1 (batched) - the model's own time <= 3 ms (per request: client latency - the server's encode_ms)
  p99_c32_batched <= max wait + 2 x tower time for a batch of 32
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import harness  # noqa: E402  (import paths: the repository and tests/, for the tiny sentencepiece trainer)

ROOT = harness.REPO


def make_base_siglip(out: Path) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor, SiglipTokenizer

    from tiny_checkpoints import train_sentencepiece

    sp_model = train_sentencepiece(out / "_sp", vocab_size=200)
    tokenizer = SiglipTokenizer(str(sp_model), model_max_length=64)
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig()).eval()  # base defaults: 12 layers, hidden 768, 64 text positions
    model.save_pretrained(out)
    SiglipProcessor(image_processor=SiglipImageProcessorPil(), tokenizer=tokenizer).save_pretrained(out)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def tower_numbers(enc, batch: int, repeats: int) -> dict:
    """Measured on a worker thread, as the server's batcher calls the model (on a busy machine torch's
    main-thread pool behaves very differently from a worker thread's)."""
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(_tower_numbers(enc, batch, repeats)))
    worker.start()
    worker.join()
    return out


def _tower_numbers(enc, batch: int, repeats: int) -> dict:
    texts = [f"tower text {i} about a red bicycle in the rain" for i in range(batch)]
    enc.encode_texts(texts[:1])
    enc.encode_texts(texts)
    singles, batches = [], []
    for i in range(max(10, repeats * 3)):
        t = time.perf_counter()
        enc.encode_texts([f"single {i}"])
        singles.append(time.perf_counter() - t)
    for _ in range(repeats):
        t = time.perf_counter()
        enc.encode_texts(texts)
        batches.append(time.perf_counter() - t)
    one, full = statistics.median(singles), statistics.median(batches)
    return {"one_text_ms": one * 1000, "batch": batch, "batch_ms": full * 1000, "texts_per_s": batch / full}


def run_load(port: int, concurrency: int, per_client: int, tag: str) -> dict:
    from search.client import SearchClient

    latencies: list[float] = []
    beyond_encode: list[float] = []  # per request: client latency - the server's encode_ms
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def client(n: int):
        with SearchClient(f"127.0.0.1:{port}", timeout=600) as c:
            c.search("bench", text=f"warm {tag} {n}", top_k=10)
            barrier.wait()
            mine, extra = [], []
            for i in range(per_client):
                t = time.perf_counter()
                response = c.search("bench", text=f"{tag} client {n} query {i}: a red bicycle", top_k=10)
                mine.append(time.perf_counter() - t)
                extra.append(mine[-1] * 1000 - response.timing.encode_ms)
            with lock:
                latencies.extend(mine)
                beyond_encode.extend(extra)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = [x * 1000 for x in latencies]
    return {"concurrency": concurrency, "requests": len(ms), "wall_s": wall, "qps": len(ms) / wall,
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "mean_ms": float(np.mean(ms)),
            "p50_beyond_encode_ms": percentile(beyond_encode, 50)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--c1-requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="concurrency-32 batched rounds, each between tower runs")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--batch-max", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--tower-repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serving.json"))
    args = parser.parse_args()

    import torch

    import encoders
    from indexer.store import Store, UpsertRow

    tmp = Path(tempfile.mkdtemp(prefix="mmsearch-bench-"))
    t = time.perf_counter()
    model_dir = make_base_siglip(tmp / "siglip-base-random")
    enc = encoders.load(model_dir)
    print(f"model: base SigLIP (random weights), dim {enc.dim}, built+loaded in {time.perf_counter() - t:.0f}s; "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}", flush=True)

    data_dir = tmp / "data"
    with Store.open(data_dir) as store:
        handle = store.create_collection("bench", enc, "flat")
        rng = np.random.default_rng(0)
        vecs = rng.normal(size=(args.items, enc.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for start in range(0, args.items, 500):
            handle.upsert([UpsertRow(uri=f"item-{i}", sha256=f"{i:064x}", width=224, height=224, vector=vecs[i],
                                     meta={"i": i}) for i in range(start, min(start + 500, args.items))])
        handle.save_index()

    def measure_tower(when: str) -> dict:
        t = dict(tower_numbers(enc, args.batch_max, args.tower_repeats), when=when)
        print(f"text tower ({when}): one text {t['one_text_ms']:.1f} ms, batch of {t['batch']} {t['batch_ms']:.0f} ms "
              f"= {t['texts_per_s']:.1f} texts/s", flush=True)
        return t

    def mean_tower(*measured: dict) -> dict:
        return {key: statistics.mean(t[key] for t in measured) for key in ("one_text_ms", "batch_ms", "texts_per_s")}

    towers, runs, rounds = [], [], []
    for batching in (True, False):
        flags = ["--workers", "64", "--batch-max", str(args.batch_max), "--batch-wait-ms", str(args.batch_wait_ms),
                 "--preload", str(model_dir), "--health-grace", "0"] + ([] if batching else ["--no-batching"])
        proc, port = harness.start_server(data_dir, tmp / f"server-{'on' if batching else 'off'}.log", *flags)
        try:
            for c in args.concurrency:
                per_client = args.c1_requests if c == 1 else args.requests_per_client
                bracketed = batching and c == 32  # the goal's run: between tower measurements
                if bracketed:
                    towers.append(measure_tower("before c=32 round 1"))
                for n in range(args.rounds if bracketed else 1):
                    r = run_load(port, c, per_client, f"{'b' if batching else 'n'}{c}r{n}")
                    r["batching"] = batching
                    runs.append(r)
                    print(f"batching {'on ' if batching else 'off'} c={c:<3d} {r['requests']:4d} requests  "
                          f"QPS {r['qps']:7.2f}  p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
                          f"beyond encode {r['p50_beyond_encode_ms']:6.2f} ms", flush=True)
                    if bracketed:  # a round's "after" is the next round's "before"
                        towers.append(measure_tower(f"after c=32 round {n + 1}"))
                        tower = mean_tower(towers[-2], towers[-1])
                        rounds.append({"qps": r["qps"], "p99_ms": r["p99_ms"], "tower": tower,
                                       "qps_vs_tower": r["qps"] / tower["texts_per_s"],
                                       "p99_bound_ms": args.batch_wait_ms + 2 * tower["batch_ms"]})
                        print(f"  round {n + 1}: QPS / tower {rounds[-1]['qps_vs_tower']:.3f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
        batches = [line.split(": ", 1)[1].strip() for line in open(tmp / f"server-{'on' if batching else 'off'}.log")
                   if "text batches" in line]
        if batches:
            print(f"  server text batches over all runs: {batches[0]}", flush=True)

    tower = mean_tower(*towers) if towers else mean_tower(measure_tower("after the load runs"))
    tower.update(batch=args.batch_max, measurements=towers)

    def pick(batching, c):
        return next((r for r in runs if r["batching"] == batching and r["concurrency"] == c), None)

    goals = {}
    if rounds:
        median_round = sorted(rounds, key=lambda r: r["qps_vs_tower"])[(len(rounds) - 1) // 2]
        goals["qps_c32_vs_tower"] = {"value": median_round["qps_vs_tower"], "goal": ">= 0.9",
                                     "rounds": [r["qps_vs_tower"] for r in rounds]}
        goals["qps_c32_vs_tower"]["met"] = goals["qps_c32_vs_tower"]["value"] >= 0.9
        worst = max(rounds, key=lambda r: r["p99_ms"] / r["p99_bound_ms"])  # each round against its own tower
        goals["p99_c32_ms"] = {"value": worst["p99_ms"], "goal": f"<= {worst['p99_bound_ms']:.0f} (max wait + 2 batches)"}
        goals["p99_c32_ms"]["met"] = worst["p99_ms"] <= worst["p99_bound_ms"]
    if pick(True, 1):
        # "p50 minus the model's own time", per request: client latency - the encode time the server reports
        # for that request (tokenize + batcher hand-off + forward), which cancels the model's own variance
        # (a single text's forward moves by +-10% from call to call). The difference from the tower's
        # one-text time is recorded too.
        goals["c1_overhead_ms"] = {"value": pick(True, 1)["p50_beyond_encode_ms"], "goal": "<= 3",
                                   "vs_tower_one_text_ms": pick(True, 1)["p50_ms"] - tower["one_text_ms"]}
        goals["c1_overhead_ms"]["met"] = goals["c1_overhead_ms"]["value"] <= 3.0
    print("\ngoals:")
    for name, g in goals.items():
        print(f"  {name:18s} {g['value']:10.3f}  goal {g['goal']:>32s}  {'met' if g['met'] else 'NOT met'}")

    out = {"model": "SigLIP base (SiglipConfig defaults, random weights), text tower, 64 tokens",
           "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "load_average_at_end": os.getloadavg()},
           "settings": {"items": args.items, "batch_max": args.batch_max, "batch_wait_ms": args.batch_wait_ms,
                        "requests_per_client": args.requests_per_client, "c1_requests": args.c1_requests,
                        "rounds": args.rounds,
                        "index": "flat", "top_k": 10},
           "tower": tower, "runs": runs, "c32_rounds": rounds, "goals": goals,
           "command": "python bench/serving.py " + " ".join(sys.argv[1:])}
    harness.save_json(args.out, out)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)  # the base checkpoint is ~800 MB
    return 0


if __name__ == "__main__":
    sys.exit(main())
