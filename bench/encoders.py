"""Encoder throughput: ours vs transformers on the same architectures with random weights (CPU).

    python bench/encoders.py                  # SigLIP rows + every family bench found beside this file
    python bench/encoders.py --families siglip --quick

Full-size architectures with random weights time exactly like trained ones. Each (family, task, dtype) runs
in its own child process that loads ours and transformers and interleaves their timed calls (A B A B ...,
`--rounds` rounds, the order turning each round, harness.compare), so a busy minute on a shared machine
hits both; a row reports the median of the paired per-round ratios with their min/max. fp32 rows compare
ours fp32 with transformers fp32 (goal >= 1.0x); bf16 rows ours bf16 with transformers loaded in bf16 (like
for like, goal >= 1.2x), with transformers fp32 interleaved beside it. The SigLIP JPEG rows time our draft
decode (reduced DCT scale, the default), our exact decode (`--exact-decode`) and transformers' processor,
and record the cosine between draft and exact vectors. Prints a table and writes bench/results/encoders.json
(one file per family run alone: encoders_<family>.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

import harness
from harness import (DTYPE_GOALS, HERE, against, compare, compare_row, print_table, reference_calls, run_child,
                     write_results)
from checkpoints import make_jpegs, make_siglip_base


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


# --------------------------------------------------------------------------------------------------
# SigLIP children

def child_siglip(args) -> dict:
    """Runs in a child process: one task, one dtype, ours and transformers interleaved."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, SiglipModel

    import encoders
    from encoders.preprocess import load_image

    torch.manual_seed(0)
    ckpt, batch = Path(args.ckpt), args.batch
    rng = np.random.default_rng(1)
    pixels = torch.from_numpy(rng.standard_normal((batch, 3, 224, 224)).astype(np.float32))
    texts = [" ".join(["a photo of a red circle on a white background"] * (1 + i % 3)) for i in range(batch)]
    files = sorted(Path(args.jpegs).glob("*.jpg"))
    enc = encoders.load(str(ckpt), dtype={"fp32": "float32", "bf16": "bfloat16"}[args.dtype])
    processor = AutoProcessor.from_pretrained(ckpt)
    draft = enc.image_preprocessor.draft_size
    preprocess = lambda paths, size=draft: enc.image_preprocessor([load_image(p, draft_size=size) for p in paths])
    hf_pixels = lambda paths: processor(images=[Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]

    def transformers_call(torch_dtype):
        model = SiglipModel.from_pretrained(ckpt, dtype=torch_dtype).eval()

        def features(out):
            return torch.nn.functional.normalize(out.pooler_output.float(), dim=-1).numpy()

        def run():
            with torch.inference_mode():
                if args.task == "images":
                    return features(model.get_image_features(pixel_values=pixels.to(torch_dtype)))
                if args.task == "texts":
                    tok = processor(text=texts, padding="max_length", truncation=True, return_tensors="pt")
                    return features(model.get_text_features(**tok))
                return features(model.get_image_features(pixel_values=hf_pixels(files).to(torch_dtype)))
        return run

    result: dict = {}
    if args.task == "preprocess":  # decoding and resizing only: no model, no dtype
        calls = {"ours": lambda: preprocess(files), "ours_exact": lambda: preprocess(files, None),
                 "transformers": lambda: hf_pixels(files)}
        out = compare(calls, len(files), args.rounds, [("ours", "transformers"), ("ours_exact", "transformers"),
                                                       ("ours", "ours_exact")])
        return {**out, "items": len(files)}
    ours = {"images": lambda: enc.encode_pixels(pixels), "texts": lambda: enc.encode_texts(texts),
            "e2e": lambda: enc.encode_pixels(preprocess(files))}[args.task]
    calls = {"ours": ours, **reference_calls(args.dtype, transformers_call)}
    items = len(files) if args.task == "e2e" else batch
    out = compare(calls, items, args.rounds, against(calls))
    reference = calls.get("transformers_fp32", calls["transformers"])()
    result["cosine_vs_reference_fp32"] = cosine_min(ours(), reference)
    if args.task == "e2e":  # the draft decode's effect on the vectors, against our own exact decode
        exact = enc.encode_pixels(preprocess(files, None))
        result["cosine_draft_vs_exact_min"] = cosine_min(ours(), exact)
        result["cosine_exact_vs_reference_fp32"] = cosine_min(exact, reference)
    return {**out, **result, "items": items}


TASKS = [  # (task, row label, dtypes)
    ("images", "images/s", ("fp32", "bf16")),
    ("texts", "texts/s", ("fp32", "bf16")),
    ("preprocess", "12MP JPEGs/s (decode+resize)", ("fp32",)),
    ("e2e", "12MP JPEG->vector/s", ("fp32", "bf16")),
]


def bench_siglip(args) -> list[dict]:
    work = Path(args.workdir)
    ckpt = make_siglip_base(work / "siglip-base")
    jpegs = work / "jpegs"
    make_jpegs(jpegs, 8)
    jpeg_dir = work / ("jpegs_quick" if args.quick else "jpegs")
    if args.quick:  # a subset of the cached files
        jpeg_dir.mkdir(exist_ok=True)
        for path in sorted(jpegs.glob("*.jpg"))[:4]:
            if not (jpeg_dir / path.name).exists():
                (jpeg_dir / path.name).symlink_to(path)
    batch = args.batch or (8 if args.quick else 32)
    rows = []
    for task, label, dtypes in TASKS:
        for dtype in dtypes:
            r = run_child(__file__, task=task, dtype=dtype, ckpt=ckpt, jpegs=jpeg_dir, rounds=args.rounds,
                          batch=32 if task == "texts" else batch)
            extra = {k: v for k, v in r.items() if k.startswith("cosine")}
            if task == "preprocess":
                exact = r["ratios"]["ours_exact/transformers"]
                draft_vs_exact = r["ratios"]["ours/ours_exact"]
                extra.update(ours_exact_decode=float(f"{r['rates']['ours_exact']:.3g}"),
                             exact_ratio=exact["median"], exact_ratio_min=exact["min"], exact_ratio_max=exact["max"],
                             draft_over_exact=draft_vs_exact["median"], draft_over_exact_min=draft_vs_exact["min"],
                             draft_over_exact_max=draft_vs_exact["max"])
            row = compare_row("siglip", label, dtype, r, goal=DTYPE_GOALS[dtype], batch=r["items"], **extra)
            rows.append(row)
            print({k: v for k, v in row.items() if k != "seconds"}, file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="siglip,altclip,blip,blip2",
                        help="comma list; each name X other than siglip runs bench_X from bench/encoders_X.py")
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer files (minutes per family)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison")
    parser.add_argument("--batch", type=int, default=0, help="image batch (default: per family, smaller with --quick)")
    parser.add_argument("--workdir", default=harness.default_workdir())
    parser.add_argument("--out-name", default="encoders", help="results file name under bench/results/")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    for family in args.families.split(","):
        family = family.strip()
        if family == "siglip":
            rows = bench_siglip(args)
        elif (HERE / f"encoders_{family}.py").is_file():
            spec = importlib.util.spec_from_file_location(f"bench_{family}", HERE / f"encoders_{family}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            rows = getattr(module, f"bench_{family}")(args)
        else:
            print(f"(no bench/encoders_{family}.py yet; skipped)", file=sys.stderr)
            continue
        print_table(rows)
        write_results(f"{args.out_name}_{family}" if family != "siglip" else args.out_name, rows,
                      rounds=args.rounds, quick=args.quick)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        harness.child_main(child_siglip)
    else:
        main()
