"""Encoder throughput: ours vs transformers on the same architectures with random weights (CPU).

    python bench/encoders.py                  # SigLIP rows + every family bench found beside this file
    python bench/encoders.py --families siglip --quick

Each measurement runs in its own child process so peak RSS is per implementation. Full-size
architectures with random weights time exactly like trained ones. Prints a table and writes
bench/results/encoders.json.
"""

from __future__ import annotations

import argparse
import json
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

import harness
from harness import HERE, alternate, peak_rss_mb, print_table, rate_row, run_child, write_results
from checkpoints import make_jpegs, make_siglip_base


def matmul_peak_gflops(dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = alternate({"mm": lambda: torch.mm(a, b)}, repeats)["mm"]
    return 2 * n ** 3 / seconds / 1e9


# --------------------------------------------------------------------------------------------------
# SigLIP children

def child_siglip(args) -> dict:
    """Runs in a child process: one implementation, one dtype, one task."""
    import torch
    from PIL import Image

    torch.manual_seed(0)
    ckpt = Path(args.ckpt)
    batch = args.batch
    rng = np.random.default_rng(1)
    pixels = torch.from_numpy(rng.standard_normal((batch, 3, 224, 224)).astype(np.float32))
    texts = [" ".join(["a photo of a red circle on a white background"] * (1 + i % 3)) for i in range(batch)]
    files = sorted(Path(args.jpegs).glob("*.jpg")) if args.jpegs else []
    result: dict = {}
    start = time.perf_counter()
    if args.impl == "ours":
        import encoders
        from encoders.preprocess import load_image

        enc = encoders.load(str(ckpt), dtype={"fp32": "float32", "bf16": "bfloat16"}[args.dtype])
        result["load_s"] = time.perf_counter() - start
        encode_images = lambda: enc.encode_pixels(pixels)
        encode_texts = lambda: enc.encode_texts(texts)
        preprocess = lambda paths: enc.image_preprocessor(
            [load_image(p, draft_size=enc.image_preprocessor.draft_size) for p in paths])
        end_to_end = lambda paths: enc.encode_pixels(preprocess(paths))
    else:
        from transformers import AutoProcessor, SiglipModel

        model = SiglipModel.from_pretrained(ckpt, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(ckpt)
        result["load_s"] = time.perf_counter() - start

        def features(out):
            feats = out.pooler_output
            return (feats / feats.norm(dim=-1, keepdim=True)).numpy()

        def encode_images():
            with torch.inference_mode():
                return features(model.get_image_features(pixel_values=pixels))

        def encode_texts():
            with torch.inference_mode():
                tok = processor(text=texts, padding="max_length", truncation=True, return_tensors="pt")
                return features(model.get_text_features(**tok))

        def preprocess(paths):
            return processor(images=[Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]

        def end_to_end(paths):
            with torch.inference_mode():
                return features(model.get_image_features(pixel_values=preprocess(paths)))

    if args.task == "images":
        from torch.utils.flop_counter import FlopCounterMode

        seconds = alternate({"run": encode_images}, args.repeats)["run"]
        result.update(rate=batch / seconds, unit="images/s")
        with FlopCounterMode(display=False) as counter:
            encode_images()
        result["gflops_per_batch"] = counter.get_total_flops() / 1e9
        result["achieved_gflops"] = result["gflops_per_batch"] / seconds
        np.save(Path(args.features) / f"images_{args.impl}_{args.dtype}.npy", encode_images())
    elif args.task == "texts":
        seconds = alternate({"run": encode_texts}, args.repeats)["run"]
        result.update(rate=batch / seconds, unit="texts/s")
        np.save(Path(args.features) / f"texts_{args.impl}_{args.dtype}.npy", encode_texts())
    elif args.task == "preprocess":
        seconds = alternate({"run": lambda: preprocess(files)}, args.repeats)["run"]
        result.update(rate=len(files) / seconds, unit="JPEGs/s", ms_per_image=1000 * seconds / len(files))
    elif args.task == "e2e":
        seconds = alternate({"run": lambda: end_to_end(files)}, args.repeats)["run"]
        result.update(rate=len(files) / seconds, unit="JPEGs/s")
        np.save(Path(args.features) / f"e2e_{args.impl}_{args.dtype}.npy", end_to_end(files))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def bench_siglip(args) -> list[dict]:
    work = Path(args.workdir)
    ckpt = make_siglip_base(work / "siglip-base")
    jpegs = work / "jpegs"
    make_jpegs(jpegs, 4 if args.quick else 8)
    feats = work / "features"
    feats.mkdir(exist_ok=True)
    repeats = 1 if args.quick else 3
    peak = {d: matmul_peak_gflops(d) for d in ("fp32", "bf16")}
    common = dict(ckpt=ckpt, jpegs=jpegs, features=feats, repeats=repeats, batch=args.batch)
    runs = {}
    for task in ("images", "texts", "preprocess", "e2e"):
        runs[(task, "hf", "fp32")] = run_child(__file__, task=task, impl="hf", dtype="fp32", **common)
        for dtype in ("fp32", "bf16"):
            if task == "preprocess" and dtype == "bf16":
                continue
            runs[(task, "ours", dtype)] = run_child(__file__, task=task, impl="ours", dtype=dtype, **common)
    load = lambda name: np.load(feats / name)
    rows = []
    for task, unit in (("images", "images/s"), ("texts", "texts/s"), ("preprocess", "12MP JPEGs/s"),
                       ("e2e", "12MP JPEG->vector/s")):
        ref = runs[(task, "hf", "fp32")]
        for dtype in ("fp32", "bf16"):
            if (task, "ours", dtype) not in runs:
                continue
            ours = runs[(task, "ours", dtype)]
            row = rate_row("siglip", unit, dtype, ours["rate"], ref["rate"], batch=args.batch,
                           ours_peak_rss_mb=round(ours["peak_rss_mb"]), reference_peak_rss_mb=round(ref["peak_rss_mb"]))
            if task in ("images", "texts", "e2e"):
                row["cosine_vs_reference_fp32"] = round(cosine_min(load(f"{task}_ours_{dtype}.npy"),
                                                                   load(f"{task}_hf_fp32.npy")), 5)
            if task == "images":
                row["achieved_gflops"] = round(ours["achieved_gflops"], 1)
                row["share_of_matmul_peak"] = round(ours["achieved_gflops"] / peak[dtype], 3)
                row["reference_share_of_fp32_peak"] = round(ref["achieved_gflops"] / peak["fp32"], 3)
            if task == "preprocess":
                row["ms_per_image_ours"] = round(ours["ms_per_image"], 1)
                row["ms_per_image_reference"] = round(ref["ms_per_image"], 1)
            rows.append(row)
    rows.append(dict(family="machine", task="matmul peak GFLOP/s", dtype="fp32", ours=round(peak["fp32"], 1),
                     reference=None, ratio=None, bf16_gflops=round(peak["bf16"], 1)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="siglip,altclip,blip,blip2",
                        help="comma list; each name X other than siglip runs bench_X from bench/encoders_X.py")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and files (smoke run)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workdir", default=harness.default_workdir())
    parser.add_argument("--out-name", default="encoders", help="results file name under bench/results/")
    # child-process arguments
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("task", "impl", "dtype", "ckpt", "jpegs", "features"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_siglip(args)))
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for family in args.families.split(","):
        family = family.strip()
        if family == "siglip":
            rows += bench_siglip(args)
        elif (HERE / f"encoders_{family}.py").is_file():
            spec = importlib.util.spec_from_file_location(f"bench_{family}", HERE / f"encoders_{family}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            rows += getattr(module, f"bench_{family}")(args)
        else:
            print(f"(no bench/encoders_{family}.py yet; skipped)", file=sys.stderr)
        print_table(rows)
    write_results(args.out_name, rows)


if __name__ == "__main__":
    main()
