"""BLIP-2 throughput and load memory: ours vs transformers at the real vision + Q-Former sizes (CPU).

    python bench/encoders_blip2.py [--quick]     # standalone: prints the table, writes bench/results/encoders_blip2.json
    python bench/encoders.py --families blip2    # through the lead's driver (calls bench_blip2)

Architecture: Salesforce/blip2-itm-vit-g / blip2-opt-* vision tower (EVA ViT-g/14 at 224 px: 1408 wide, 39
layers) and Q-Former (BERT-base sized, 32 queries, cross-attention every 2nd layer); for captioning an
OPT-125m sized language model (768 wide, 12 layers, vocabulary 50272) stands in for OPT-2.7b. Random weights
are written straight to safetensors (one tensor at a time; the ITM checkpoint is ~4.4 GB, which also serves
the peak-RSS-while-loading measurement) and deleted afterwards. Each (task, dtype) runs in its own child
process that loads both implementations and alternates their timed calls, so load changes on a shared
machine hit both. The reference always runs in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import harness
from harness import alternate, peak_rss_mb, print_table, rate_row, run_child, write_results

OPT_125M = dict(model_type="opt", vocab_size=50272, hidden_size=768, ffn_dim=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=2048, word_embed_proj_dim=768, pad_token_id=1,
                bos_token_id=2, eos_token_id=2)
DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64"}


def _write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> int:
    """Random float32 tensors in the safetensors layout, generated and written one at a time (so writing a
    multi-GB file needs one tensor of memory). LayerNorm weights are 1 and biases 0, other weights N(0, 0.02)."""
    import torch

    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape in shapes.items():
            norm = any(k in name.lower() for k in ("layernorm", "layer_norm", "norm."))
            if norm and name.endswith("weight"):
                t = torch.ones(shape)
            elif name.endswith("bias") or name.endswith("q_bias") or name.endswith("v_bias"):
                t = torch.zeros(shape) if norm else torch.randn(shape, generator=gen) * 0.02
            else:
                t = torch.randn(shape, generator=gen) * 0.02
            f.write(t.contiguous().numpy().tobytes())
    return path.stat().st_size


def make_checkpoint(directory: Path, kind: str) -> Path:
    """kind "itm": Blip2ForImageTextRetrieval (blip2-itm-vit-g sizes); "opt": Blip2ForConditionalGeneration
    with an OPT-125m sized language model. Tokenizers are small (the corpus of the tests); sizes of the
    embedding tables are the real ones."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import (BertTokenizer, Blip2Config, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval,
                              Blip2Processor, BlipImageProcessorPil, GPT2Tokenizer)
    from tiny_blip2 import _read_merges, train_byte_bpe, train_wordpiece

    directory.mkdir(parents=True, exist_ok=True)
    work = directory.parent / f"{directory.name}_tok"
    if kind == "itm":
        tokenizer = BertTokenizer(str(train_wordpiece(work)), model_max_length=512)
        config = Blip2Config(qformer_config=dict(use_qformer_text_input=True), num_query_tokens=32)
        cls = Blip2ForImageTextRetrieval
    else:
        vocab, merges = train_byte_bpe(work)
        tokenizer = GPT2Tokenizer(vocab=json.loads(vocab.read_text()), merges=_read_merges(merges), bos_token="</s>",
                                  eos_token="</s>", unk_token="</s>", pad_token="<pad>", add_bos_token=True)
        config = Blip2Config(text_config=OPT_125M, num_query_tokens=32)
        cls = Blip2ForConditionalGeneration
    processor = Blip2Processor(BlipImageProcessorPil(size={"height": 224, "width": 224}), tokenizer,
                               num_query_tokens=32)
    config.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    with torch.device("meta"):
        model = cls(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()
              if not name.endswith("position_ids") and not name.endswith("lm_head.weight")}
    _write_safetensors(directory / "model.safetensors", shapes)
    config.save_pretrained(directory)
    processor.save_pretrained(directory)
    shutil.rmtree(work, ignore_errors=True)
    return directory


# --------------------------------------------------------------------------------------------------
# children


def child_load(args) -> dict:
    import encoders

    start = time.perf_counter()
    encoders.load_reranker(args.ckpt, dtype=args.dtype)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def _images(count: int):
    from images import random_image

    return [random_image(640, 480, "RGB", seed=i) for i in range(count)]


def child_itm(args) -> dict:
    import torch
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    import encoders

    torch.set_num_threads(args.threads)
    images, texts = _images(args.batch), [f"a photo of a cat number {i}" for i in range(args.batch)]
    rr = encoders.load_reranker(args.ckpt, dtype=args.dtype)
    ref = Blip2ForImageTextRetrieval.from_pretrained(args.ckpt, dtype=torch.float32).eval()
    processor = Blip2Processor.from_pretrained(args.ckpt)

    def reference():
        inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = ref(**inputs, use_image_text_matching_head=True).logits_per_image
        return logits.softmax(dim=-1)[:, 1].numpy()

    best = alternate({"ours": lambda: rr.score(images, texts), "reference": reference}, args.repeats)
    ours_s, ref_s = best["ours"], best["reference"]
    diff = float(np.abs(rr.score(images, texts) - reference()).max())
    return {"ours": args.batch / ours_s, "reference": args.batch / ref_s, "max_prob_diff": diff}


def child_caption(args) -> dict:
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    import encoders

    torch.set_num_threads(args.threads)
    images = _images(args.batch)
    cap = encoders.load_captioner(args.ckpt, dtype=args.dtype)
    ref = Blip2ForConditionalGeneration.from_pretrained(args.ckpt, dtype=torch.float32).eval()
    processor = Blip2Processor.from_pretrained(args.ckpt)
    # no eos: the random model generates all max_new_tokens in both implementations
    ref.language_model.generation_config.eos_token_id = None
    cap.eos_id = -1
    new = args.max_new_tokens

    def reference():
        inputs = processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            return ref.generate(**inputs, max_new_tokens=new, num_beams=1, min_new_tokens=new)

    best = alternate({"ours": lambda: cap.generate_ids(images, max_new_tokens=new), "reference": reference}, args.repeats)
    ours_s, ref_s = best["ours"], best["reference"]
    same = None
    if args.dtype == "float32":
        ours_ids = cap.generate_ids(images, max_new_tokens=new)
        ref_ids = [row[32:] for row in reference().tolist()]
        same = ours_ids == ref_ids
    return {"ours": args.batch / ours_s, "reference": args.batch / ref_s, "tokens_identical": same}


CHILDREN = {"load": child_load, "itm": child_itm, "caption": child_caption}


# --------------------------------------------------------------------------------------------------


def bench_blip2(args) -> list[dict]:
    quick = getattr(args, "quick", False)
    base = Path(getattr(args, "workdir", None) or harness.default_workdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="blip2_bench_", dir=base))
    threads = int(getattr(args, "threads", 0) or os.cpu_count())
    repeats = 1 if quick else 2
    rows = []
    try:
        itm = make_checkpoint(work / "itm", "itm")
        size_mb = (itm / "model.safetensors").stat().st_size / 2 ** 20
        for dtype in ("float32", "bfloat16"):
            load = run_child(__file__, task="load", ckpt=itm, dtype=dtype)
            rows.append({"family": "blip2", "task": "load peak RSS MB", "dtype": dtype[:4].replace("floa", "fp32")
                         if dtype == "float32" else "bf16", "ours": round(load["peak_rss_mb"]),
                         "reference": None, "ratio": round(load["peak_rss_mb"] / size_mb, 3),
                         "file_mb": round(size_mb), "load_seconds": round(load["seconds"], 1),
                         "note": "ratio = peak RSS / checkpoint file size"})
        for dtype in ("float32", "bfloat16"):
            r = run_child(__file__, task="itm", ckpt=itm, dtype=dtype, batch=2 if quick else 4, repeats=repeats, threads=threads)
            rows.append(rate_row("blip2", "ITM pairs/s", "fp32" if dtype == "float32" else "bf16", r["ours"],
                                 r["reference"], max_prob_diff=r["max_prob_diff"], note="reference fp32; ViT-g + Q-Former"))
        shutil.rmtree(itm)
        cap = make_checkpoint(work / "opt", "opt")
        for dtype in ("float32", "bfloat16"):
            r = run_child(__file__, task="caption", ckpt=cap, dtype=dtype, batch=2, repeats=repeats, threads=threads,
                          max_new_tokens=10 if quick else 20)
            rows.append(rate_row("blip2", "captions images/s", "fp32" if dtype == "float32" else "bf16", r["ours"],
                                 r["reference"], tokens_identical=r["tokens_identical"],
                                 note="reference fp32; ViT-g + Q-Former + OPT-125m sized LM, greedy"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=sorted(CHILDREN))
    parser.add_argument("--ckpt")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.task](args)))
        return
    rows = bench_blip2(args)
    print_table(rows)
    write_results("encoders_blip2", rows)

if __name__ == "__main__":
    main()
