"""Distributed-engine benchmark (a): what the Ray engine itself costs. The same job (same small SigLIP with
random weights, same JPEGs, same batch and commit sizes, a fresh SQLite data dir each run) runs on the local
engine and on `--engine ray` with one encoder actor on a local Ray, interleaved in time (local, ray, ray, local,
...), each run in a fresh process; the paired ratio local_seconds / ray_seconds (> 1: Ray faster) per round,
its median and spread. Goal: >= 0.9 (the engine costs at most ~10% on one machine, so N actors on N GPUs are
bounded by the catalog, not the engine).

Both sides get the same CPU: the local job one decode process and one torch thread in the job process; the
Ray job one actor of one CPU (one torch thread) and decode tasks on the other CPU of a 2-CPU local Ray.
Timed: index_paths from call to return, so the Ray side includes starting Ray, the actor and the model load
in it (`total_s`); `job_s` is the job's own elapsed time (JobResult, after Ray is up); `first_item_s` is when
the job handled its first input (the engine's start-up before it), `after_first_item_s` the rest.

    python bench/distributed.py [--images 1500] [--rounds 3] [--out bench/results/distributed_engine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

SIZES = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, image_size=112,
             patch_size=16)


def make_small_siglip(directory: Path) -> Path:
    """A small SigLIP (ViT 4 x 192 at 112 px, 49 patches; random weights) saved by transformers."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor, SiglipTokenizer

    from tiny_checkpoints import train_sentencepiece

    if (directory / "config.json").is_file():
        return directory
    sp = train_sentencepiece(directory / "_sp", vocab_size=400)
    tokenizer = SiglipTokenizer(str(sp), model_max_length=16)
    config = SiglipConfig(text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=192, intermediate_size=768,
                                           num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                           projection_size=192),
                          vision_config=SIZES)
    torch.manual_seed(0)
    SiglipModel(config).eval().save_pretrained(directory)
    size = SIZES["image_size"]
    SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": size, "width": size}),
                    tokenizer=tokenizer).save_pretrained(directory)
    shutil.rmtree(directory / "_sp")
    return directory


def make_photos(directory: Path, n: int) -> Path:
    """n 640x480 JPEGs (smooth shading + noise, quality 90); reused when there."""
    from images import random_image

    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = directory / f"p{i:05d}.jpg"
        if not path.exists():
            random_image(640, 480, seed=i).save(path, quality=90)
    return directory


def child(engine: str, model: str, photos: str, data_dir: str) -> dict:
    """One job in this (fresh) process; prints its timings."""
    import torch

    import encoders
    from indexer.jobs import JobOptions, index_paths
    from indexer.ray_job import RayOptions
    from indexer.store import Store

    from indexer.jobs import _Runner

    torch.set_num_threads(1)
    enc = encoders.load(model)
    options = JobOptions(workers=1, batch_size=32, commit_every=256)
    ray = RayOptions(actors=1, cpus_per_actor=1, object_store_memory=200_000_000) if engine == "ray" else None
    first: list[float] = []  # when the job handled its first input: what came before is the engine's start
    handle = _Runner._handle

    def timed_handle(runner, ev):
        if not first:
            first.append(time.perf_counter())
        return handle(runner, ev)

    _Runner._handle = timed_handle
    with Store(data_dir) as store:
        t0 = time.perf_counter()
        result = index_paths(store, "c", enc, [photos], options, engine=ray)
        total = time.perf_counter() - t0
    return {"total_s": total, "job_s": result.elapsed_s, "added": result.added, "first_item_s": first[0] - t0,
            "after_first_item_s": total - (first[0] - t0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=harness.default_workdir())
    parser.add_argument("--out", default=str(harness.RESULTS / "distributed_engine.json"))
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "MODEL", "PHOTOS", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)))
        return
    work = Path(args.workdir)
    model = make_small_siglip(work / "siglip-small-112")
    photos = make_photos(work / f"photos640-{args.images}", args.images)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(harness.CODE), str(harness.REPO / "tests")]))

    def run(engine: str) -> dict:
        data = tempfile.mkdtemp(prefix=f"mmsearch-dist-{engine}-")
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", engine, str(model), str(photos), data],
                                  capture_output=True, text=True, env=env, timeout=1800)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                raise RuntimeError(f"{engine} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            out = json.loads(line[-1][len("RESULT "):])
            assert out["added"] == args.images, out
            return out
        finally:
            shutil.rmtree(data, ignore_errors=True)

    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    for r in range(args.rounds):  # order turns each round: local ray, ray local, ...
        for engine in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
            runs[engine].append(run(engine))
            print(f"round {r + 1} {engine}: {runs[engine][-1]}", flush=True)
    total = harness.paired([x["total_s"] for x in runs["ray"]], [x["total_s"] for x in runs["local"]])
    job = harness.paired([x["job_s"] for x in runs["ray"]], [x["job_s"] for x in runs["local"]])
    rate = {e: round(args.images / harness.median([x["total_s"] for x in v]), 1) for e, v in runs.items()}
    # where the Ray job loses time: before its first item (Ray's start, the Ray Data pipeline's workers and
    # actor, the model load in it) or while items flow
    phases = {e: {k: round(harness.median([x[k] for x in v]), 2) for k in ("first_item_s", "after_first_item_s")}
              for e, v in runs.items()}
    steady = harness.paired([x["after_first_item_s"] for x in runs["ray"]],
                            [x["after_first_item_s"] for x in runs["local"]])
    out = {
        "benchmark": "distributed engine cost (a): Ray job with one actor vs the local job",
        "command": "python bench/distributed.py " + " ".join(a for a in sys.argv[1:]),
        "model": f"SigLIP random weights, vision {SIZES}", "images": args.images, "image_size": "640x480 JPEG",
        "rounds": args.rounds, "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "ratio_local_over_ray_total": total, "ratio_local_over_ray_job": job,
        "images_per_s_median": rate, "phases_median_s": phases, "ratio_local_over_ray_after_first_item": steady,
        "goal": ">= 0.9 (median of ratio_local_over_ray_total)",
        "goal_met": total["median"] >= 0.9, "runs": runs,
    }
    print(json.dumps({k: out[k] for k in ("ratio_local_over_ray_total", "ratio_local_over_ray_job",
                                          "ratio_local_over_ray_after_first_item", "phases_median_s",
                                          "images_per_s_median", "goal_met")}, indent=1))
    harness.save_json(args.out, out)


if __name__ == "__main__":
    main()
