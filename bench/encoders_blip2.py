"""BLIP-2 throughput and load memory: ours vs transformers at the real vision + Q-Former sizes (CPU).

    python bench/encoders.py --families blip2 [--quick]    # writes bench/results/encoders_blip2.json

Architecture: Salesforce/blip2-itm-vit-g / blip2-opt-* vision tower (EVA ViT-g/14 at 224 px: 1408 wide, 39
layers) and Q-Former (BERT-base sized, 32 queries, cross-attention every 2nd layer); for captioning an
OPT-125m sized language model (768 wide, 12 layers, vocabulary 50272) stands in for OPT-2.7b. Random weights
are written straight to safetensors (one tensor at a time; the ITM checkpoint is ~4.4 GB, which also serves
the peak-RSS-while-loading measurement) and deleted afterwards. Each (task, dtype) runs in its own child
process that loads both implementations and interleaves their timed calls round by round (harness.compare;
bf16 rows: transformers in bf16 and in fp32 beside it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import harness
from harness import (DTYPE_GOALS, against, compare, compare_row, peak_rss_mb, processor_inputs, reference_calls,
                     run_child)

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

    images, texts = _images(args.batch), [f"a photo of a cat number {i}" for i in range(args.batch)]
    rr = encoders.load_reranker(args.ckpt, dtype=args.dtype)
    processor = Blip2Processor.from_pretrained(args.ckpt)

    def transformers_call(torch_dtype):
        ref = Blip2ForImageTextRetrieval.from_pretrained(args.ckpt, dtype=torch_dtype).eval()

        def run():
            inputs = processor_inputs(processor, torch_dtype, images=images, text=texts, padding=True)
            with torch.inference_mode():
                logits = ref(**inputs, use_image_text_matching_head=True).logits_per_image
            return logits.float().softmax(dim=-1)[:, 1].numpy()
        return run

    ours = lambda: rr.score(images, texts)
    calls = {"ours": ours, **reference_calls(_short(args.dtype), transformers_call)}
    out = compare(calls, args.batch, args.rounds, against(calls))
    diff = float(np.abs(ours() - calls.get("transformers_fp32", calls["transformers"])()).max())
    return {**out, "max_prob_diff_vs_reference_fp32": diff}


def child_caption(args) -> dict:
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    import encoders

    images = _images(args.batch)
    cap = encoders.load_captioner(args.ckpt, dtype=args.dtype)
    processor = Blip2Processor.from_pretrained(args.ckpt)
    cap.eos_id = -1  # no eos: the random model generates all max_new_tokens in both implementations
    new = args.max_new_tokens

    def transformers_call(torch_dtype):
        ref = Blip2ForConditionalGeneration.from_pretrained(args.ckpt, dtype=torch_dtype).eval()
        ref.language_model.generation_config.eos_token_id = None

        def run():
            inputs = processor_inputs(processor, torch_dtype, images=images)
            with torch.inference_mode():
                return ref.generate(**inputs, max_new_tokens=new, num_beams=1, min_new_tokens=new)
        return run

    ours = lambda: cap.generate_ids(images, max_new_tokens=new)
    calls = {"ours": ours, **reference_calls(_short(args.dtype), transformers_call)}
    out = compare(calls, args.batch, args.rounds, against(calls))
    same = None
    if args.dtype == "float32":
        same = ours() == [row[32:] for row in calls["transformers"]().tolist()]
    return {**out, "tokens_identical": same}


def _short(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16"}[dtype]


CHILDREN = {"load": child_load, "itm": child_itm, "caption": child_caption}


# --------------------------------------------------------------------------------------------------


def bench_blip2(args) -> list[dict]:
    quick = args.quick
    base = Path(args.workdir)
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="blip2_bench_", dir=base))
    rows = []
    try:
        itm = make_checkpoint(work / "itm", "itm")
        size_mb = (itm / "model.safetensors").stat().st_size / 2 ** 20
        for dtype in ("float32", "bfloat16"):
            load = run_child(__file__, task="load", ckpt=itm, dtype=dtype)
            rows.append({"family": "blip2", "task": "load peak RSS MB", "dtype": _short(dtype),
                         "ours": round(load["peak_rss_mb"]), "reference": None,
                         "ratio": round(load["peak_rss_mb"] / size_mb, 3), "file_mb": round(size_mb),
                         "load_seconds": round(load["seconds"], 1), "note": "ratio = peak RSS / checkpoint file size"})
        for dtype in ("float32", "bfloat16"):
            batch = 2 if quick else 4
            r = run_child(__file__, task="itm", ckpt=itm, dtype=dtype, batch=batch, rounds=args.rounds)
            rows.append(compare_row("blip2", "ITM pairs/s", _short(dtype), r, goal=DTYPE_GOALS[_short(dtype)],
                                    batch=batch, max_prob_diff_vs_reference_fp32=r["max_prob_diff_vs_reference_fp32"],
                                    note="ViT-g + Q-Former"))
        shutil.rmtree(itm)
        cap = make_checkpoint(work / "opt", "opt")
        for dtype in ("float32", "bfloat16"):
            r = run_child(__file__, task="caption", ckpt=cap, dtype=dtype, batch=2, rounds=args.rounds,
                          max_new_tokens=10 if quick else 20)
            rows.append(compare_row("blip2", "captions images/s", _short(dtype), r, goal=DTYPE_GOALS[_short(dtype)],
                                    batch=2, tokens_identical=r["tokens_identical"],
                                    note="ViT-g + Q-Former + OPT-125m sized LM, greedy"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _child(args) -> dict:
    return CHILDREN[args.task](args)


if __name__ == "__main__":
    harness.child_main(_child)
