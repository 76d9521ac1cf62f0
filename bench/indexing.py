"""Indexing benchmark: end-to-end images/s of `index_paths` on a folder of synthetic 1-12 MP JPEGs with the
base-size SigLIP (random weights), next to decode-only and encode-only rates measured in the same run, and
peak RSS of jobs over 1k and 10k items with the tiny model.

    python bench/indexing.py [--images 300] [--workers 1] [--rss-items 1000 10000] [--out bench/results/indexing.json]

decode-only: the job's decode stage (read, sha256, load_image with JPEG draft, preprocess) over every file
             in `--workers` processes, nothing else running.
encode-only: enc.encode_pixels on the already-preprocessed tensors, batch 32, in this process.
Order: decode, encode, end-to-end, decode, encode; the ratio uses the mean of the two decode and two encode
runs around the end-to-end run (the machine is shared, other load comes and goes).
end-to-end : index_paths into an empty data dir (decode workers + batched encode + commits + index).
Goal: end-to-end time <= 1.1 x (decode-only time + encode-only time): the pipeline adds (almost) nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import harness  # noqa: E402  (import paths: the repository and tests/; save_json)

ROOT = harness.REPO


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n camera-like JPEGs of 1-12 MP (smooth structure + noise, quality 90); reused when already there."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"photo_{i:04d}.jpg"
        paths.append(path)
        mp_target = rng.uniform(1.0, 12.0)
        aspect = rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0])
        h = int(np.sqrt(mp_target * 1e6 / aspect))
        w = int(h * aspect)
        if path.exists():
            continue
        small = rng.integers(0, 256, (max(h // 64, 2), max(w // 64, 2), 3), dtype=np.uint8)
        img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)
    return paths


def _decode_one(args):
    from indexer.ingest import Ingest, SourceItem
    from indexer.jobs import decode_item

    path, prep = args
    ingest = Ingest(max_bytes=1 << 30, max_pixels=100_000_000, draft_size=prep.draft_size, preprocessor=prep,
                    thumbnails=False)
    out = decode_item(SourceItem(uri=str(path), path=str(path)), ingest)
    assert out[0] == "ok", out
    return out[1].pixels


def decode_only(paths, prep, workers: int) -> tuple[float, np.ndarray]:
    ctx = mp.get_context("fork")
    t0 = time.perf_counter()
    with ctx.Pool(workers, initializer=_single_thread) as pool:
        pixels = pool.map(_decode_one, [(p, prep) for p in paths], chunksize=1)
    return time.perf_counter() - t0, np.stack(pixels)


def _single_thread():
    import torch

    torch.set_num_threads(1)


def encode_only(enc, pixels: np.ndarray, batch: int = 32) -> float:
    import torch

    enc.encode_pixels(torch.from_numpy(pixels[:2]))  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch):
        enc.encode_pixels(torch.from_numpy(pixels[i:i + batch]))
    return time.perf_counter() - t0


def end_to_end(enc, folder: Path, workers: int) -> tuple[float, dict]:
    from indexer.jobs import JobOptions, index_paths
    from indexer.store import Store

    with tempfile.TemporaryDirectory() as data, Store(data) as store:
        t0 = time.perf_counter()
        r = index_paths(store, "bench", enc, [str(folder)], JobOptions(workers=workers, batch_size=32))
        elapsed = time.perf_counter() - t0
    return elapsed, {"added": r.added, "failed": r.failed, "job_decode_cpu_s": round(r.decode_s, 2),
                     "job_encode_s": round(r.encode_s, 2)}


RSS_JOB = """
import json, sys
import encoders
from indexer.jobs import JobOptions, index_paths
from indexer.store import Store
enc = encoders.load(sys.argv[1])
with Store(sys.argv[2]) as store:
    r = index_paths(store, "rss", enc, [sys.argv[3]], JobOptions(workers=1, batch_size=64, commit_every=256))
# VmHWM: this process's own peak (ru_maxrss would carry over the launching process's peak across exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"added": r.added, "seconds": round(r.elapsed_s, 2), "peak_rss_mb": round(int(hwm) / 1024, 1)}))
"""


def rss_run(tiny: Path, n: int, work: Path) -> dict:
    from images import random_image

    folder = work / f"rss_{n}"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        p = folder / f"{i:05d}.png"
        if not p.exists():
            random_image(48 + i % 17, 40 + i % 13, seed=i).save(p)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as data:
        out = subprocess.run([sys.executable, "-c", RSS_JOB, str(tiny), data, str(folder)], env=env,
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rss-items", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "mmsearch-bench-indexing"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "indexing.json"))
    ap.add_argument("--only-rss", action="store_true", help="re-measure only the peak-RSS runs into --out")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.only_rss:
        from tiny_checkpoints import make_tiny_siglip

        tiny = work / "siglip-tiny"
        if not (tiny / "config.json").exists():
            make_tiny_siglip(tiny)
        result = json.loads(Path(args.out).read_text())
        result["peak_rss_tiny_model"] = {str(n): rss_run(tiny, n, work) for n in args.rss_items}
        print(result["peak_rss_tiny_model"])
        harness.save_json(args.out, result)
        return

    import importlib.util

    import encoders
    from tiny_checkpoints import make_tiny_siglip

    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "bench" / "serving.py")
    serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving)  # make_base_siglip: the one base-size SigLIP builder of the benchmarks
    make_base_siglip = serving.make_base_siglip

    t0 = time.perf_counter()
    paths = make_jpegs(work / "jpegs", args.images)
    megapixels = []
    from PIL import Image
    for p in paths:
        with Image.open(p) as im:
            megapixels.append(im.size[0] * im.size[1] / 1e6)
    print(f"{len(paths)} JPEGs, {min(megapixels):.1f}-{max(megapixels):.1f} MP "
          f"(mean {np.mean(megapixels):.1f}), {sum(p.stat().st_size for p in paths) / 1e6:.0f} MB "
          f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    base_dir = work / "siglip-base"
    if not (base_dir / "config.json").exists():
        make_base_siglip(base_dir)
    enc = encoders.load(base_dir)

    # Interleaved: encode-only, end-to-end, encode-only again, decode-only; other processes on a shared
    # machine come and go, so the end-to-end run is compared with the encode runs on either side of it.
    load_before = os.getloadavg()
    dec_s, pixels = decode_only(paths, enc.image_preprocessor, args.workers)
    print(f"decode-only: {dec_s:.1f}s ({len(paths) / dec_s:.1f} img/s)", flush=True)
    enc_runs = [encode_only(enc, pixels)]
    print(f"encode-only: {enc_runs[0]:.1f}s ({len(paths) / enc_runs[0]:.2f} img/s)", flush=True)
    del pixels
    e2e_s, job = end_to_end(enc, work / "jpegs", args.workers)
    print(f"end-to-end : {e2e_s:.1f}s ({len(paths) / e2e_s:.2f} img/s) {job}", flush=True)
    dec2_s, pixels = decode_only(paths, enc.image_preprocessor, args.workers)
    enc_runs.append(encode_only(enc, pixels))
    del pixels
    print(f"encode-only again: {enc_runs[1]:.1f}s; decode-only again: {dec2_s:.1f}s", flush=True)
    dec_s = (dec_s + dec2_s) / 2
    enc_s = sum(enc_runs) / 2
    ratio = e2e_s / (dec_s + enc_s)
    print(f"end-to-end / (decode + encode) = {ratio:.3f} (goal <= 1.1)", flush=True)

    tiny = work / "siglip-tiny"
    if not (tiny / "config.json").exists():
        make_tiny_siglip(tiny)
    rss = {}
    for n in args.rss_items:
        rss[str(n)] = rss_run(tiny, n, work)
        print(f"tiny model, {n} items: {rss[str(n)]}", flush=True)

    result = {
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "images": len(paths), "megapixels_mean": round(float(np.mean(megapixels)), 2),
        "model": "SiglipConfig() defaults (siglip-base-patch16-224 architecture), random weights, fp32",
        "workers": args.workers,
        "encode_only_runs_s": [round(x, 2) for x in enc_runs],
        "decode_only_s": round(dec_s, 2), "decode_only_img_s": round(len(paths) / dec_s, 2),
        "encode_only_s": round(enc_s, 2), "encode_only_img_s": round(len(paths) / enc_s, 3),
        "end_to_end_s": round(e2e_s, 2), "end_to_end_img_s": round(len(paths) / e2e_s, 3),
        "end_to_end_over_sum": round(ratio, 3), "goal_end_to_end_over_sum": 1.1, "goal_met": ratio <= 1.1,
        "job": job, "peak_rss_tiny_model": rss,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    harness.save_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
