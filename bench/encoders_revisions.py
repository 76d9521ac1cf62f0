"""Our encoder at two git revisions, interleaved: did a refactor move the numbers?

    python bench/encoders_revisions.py --before REV [--after REV|worktree] [--task images|texts] [--rounds 6]

Each side is a worker process (bench/harness.Worker) importing `encoders` from its own tree (`--before` is
exported with `git archive`; the working tree is the default `--after`). Both load the SigLIP base
architecture (random weights, fp32) and take turns, A B A B ..., on the same batch of 32; the result is the
median per-round ratio with its spread. Writes bench/results/encoders_revisions.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import harness
from checkpoints import make_siglip_base
from harness import REPO, Worker, median, paired, serve_worker, write_results


def export(rev: str, into: Path) -> Path:
    """The tree of `rev` (via git archive) under `into`, or the working tree for "worktree"."""
    if rev == "worktree":
        return REPO
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], check=True, capture_output=True,
                            text=True).stdout.strip()
    out = into / commit
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def worker(args) -> None:
    import torch

    import encoders

    torch.manual_seed(0)
    enc = encoders.load(args.ckpt, dtype=args.dtype)
    batch = args.batch
    if args.task == "images":
        pixels = torch.from_numpy(np.random.default_rng(1).standard_normal((batch, 3, 224, 224)).astype(np.float32))
        call = lambda: enc.encode_pixels(pixels)
    else:
        texts = [" ".join(["a photo of a red circle on a white background"] * (1 + i % 3)) for i in range(batch)]
        call = lambda: enc.encode_texts(texts)
    call()  # warm-up
    serve_worker(call, source=encoders.__file__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="git revision (required)")
    parser.add_argument("--after", default="worktree", help="git revision, or 'worktree' (default)")
    parser.add_argument("--task", choices=("images", "texts"), default="images")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workdir", default=harness.default_workdir())
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.before:
        parser.error("--before is required")
    ckpt = make_siglip_base(Path(args.workdir) / "siglip-base")
    scratch = Path(tempfile.mkdtemp(prefix="revisions_", dir=args.workdir))
    try:
        trees = {"before": export(args.before, scratch), "after": export(args.after, scratch)}
        common = ["--ckpt", str(ckpt), "--task", args.task, "--dtype", args.dtype, "--batch", str(args.batch)]
        workers = {side: Worker(__file__, common, code=tree) for side, tree in trees.items()}
        for side, w in workers.items():
            print(f"{side}: {w.info['source']}", flush=True)
        try:
            seconds = harness.interleave({side: w.run for side, w in workers.items()}, args.rounds, warmup=0)
        finally:
            for w in workers.values():
                w.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = paired(seconds["after"], seconds["before"])
    row = {"family": "siglip", "task": f"{args.task}/s", "dtype": args.dtype, "batch": args.batch,
           "before": args.before, "after": args.after,
           "before_rate": round(args.batch / median(seconds["before"]), 3),
           "after_rate": round(args.batch / median(seconds["after"]), 3),
           "after_vs_before": ratio, "seconds": {k: [round(v, 3) for v in vs] for k, vs in seconds.items()}}
    print(f"siglip {args.task} {args.dtype}: before {row['before_rate']}/s, after {row['after_rate']}/s, "
          f"after/before {ratio['median']}x ({ratio['min']}..{ratio['max']}, {ratio['rounds']} rounds)")
    write_results("encoders_revisions", [row])


if __name__ == "__main__":
    main()
