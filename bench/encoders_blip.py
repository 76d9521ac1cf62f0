"""BLIP throughput: ours vs transformers at the real architecture sizes with random weights (CPU).

    python bench/encoders_blip.py [--quick]     # standalone: prints the table, writes bench/results/encoders_blip.json
    python bench/encoders.py --families blip    # through the lead's driver (calls bench_blip)

Architectures: Salesforce/blip-itm-base-coco (ViT-B/16 at 384 px, BERT-base text with cross-attention,
256-d ITC projections) and Salesforce/blip-image-captioning-base (same towers, BERT-base decoder + LM head,
vocabulary 30524). Each (task, dtype) runs in its own child process that loads both implementations and
alternates their timed calls (best of N after a warm-up), so load changes on a shared machine hit both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import harness
from harness import alternate, print_table, rate_row, run_child, write_results


BASE_TEXT = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=512, bos_token_id=30522, pad_token_id=0,
                 sep_token_id=102, eos_token_id=2)
BASE_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=384, patch_size=16, initializer_range=0.02)


def make_checkpoint(directory: Path, kind: str) -> Path:
    """blip-itm-base-coco (kind="retrieval") or blip-image-captioning-base ("captioning") sizes, random weights,
    with a BERT vocab.txt of the real size (the corpus words, then filler tokens)."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval,
                              BlipImageProcessorPil, BlipProcessor)
    from tiny_blip import write_vocab

    vocab = write_vocab(directory.parent / f"{directory.name}_vocab" / "vocab.txt")
    lines = vocab.read_text(encoding="utf-8").splitlines()
    vocab.write_text("\n".join(lines + [f"tok{i}" for i in range(30522 - len(lines))]) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab), model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    config = BlipConfig(text_config={**BASE_TEXT, "sep_token_id": tokenizer.sep_token_id,
                                     "bos_token_id": tokenizer.bos_token_id},
                        vision_config=BASE_VISION, image_text_hidden_size=256)
    torch.manual_seed(0)
    cls = BlipForImageTextRetrieval if kind == "retrieval" else BlipForConditionalGeneration
    cls(config).eval().save_pretrained(directory)
    BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def child(args) -> dict:
    import torch
    from transformers import AutoProcessor, BlipForConditionalGeneration, BlipForImageTextRetrieval

    import encoders
    from images import random_image

    torch.manual_seed(0)
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    ckpt, n = Path(args.ckpt), args.batch
    processor = AutoProcessor.from_pretrained(ckpt)
    images = [random_image(640, 480, seed=i) for i in range(n)]
    texts = [" ".join(["a photo of a red circle on a white background"] * (1 + i % 3)) for i in range(n)]
    normalize = lambda t: torch.nn.functional.normalize(t.float(), dim=-1).numpy()
    result: dict = {}
    if args.task in ("images", "texts", "itm"):
        ref = BlipForImageTextRetrieval.from_pretrained(ckpt, dtype=torch.float32).eval()
    else:
        ref = BlipForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()

    if args.task == "images":
        enc = encoders.load(str(ckpt), dtype=dtype)
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        ours = lambda: enc.encode_pixels(pixels)

        def reference():
            with torch.inference_mode():
                return normalize(ref.vision_proj(ref.vision_model(pixel_values=pixels).last_hidden_state[:, 0]))
    elif args.task == "texts":
        enc = encoders.load(str(ckpt), dtype=dtype)
        ours = lambda: enc.encode_texts(texts)

        def reference():
            with torch.inference_mode():
                tok = processor(text=texts, padding=True, truncation=True, return_tensors="pt")
                hidden = ref.text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
                return normalize(ref.text_proj(hidden.last_hidden_state[:, 0]))
    elif args.task == "itm":
        rr = encoders.load_reranker(str(ckpt), dtype=dtype)
        ours = lambda: rr.score(images, texts)

        def reference():
            with torch.inference_mode():
                inputs = processor(images=images, text=texts, padding=True, truncation=True, return_tensors="pt")
                return ref(**inputs).itm_score.softmax(dim=-1)[:, 1].numpy()
    else:
        cap = encoders.load_captioner(str(ckpt), dtype=dtype)
        ours = lambda: cap.caption(images, max_new_tokens=30)

        def reference():
            with torch.inference_mode():
                out = ref.generate(**processor(images=images, return_tensors="pt"), max_new_tokens=30)
                return processor.batch_decode(out, skip_special_tokens=True)

    seconds = alternate({"ours": ours, "reference": reference}, args.repeats)
    result.update(ours=n / seconds["ours"], reference=n / seconds["reference"])
    a, b = ours(), reference()
    if args.task in ("images", "texts"):
        result["cosine_vs_reference_fp32"] = float((a * b).sum(axis=1).min())
    elif args.task == "itm":
        result["max_prob_diff_vs_reference_fp32"] = float(np.abs(a - b).max())
    else:
        result["same_captions_as_reference_fp32"] = f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"
    return result


TASKS = [  # (task, checkpoint kind, row label, batch)
    ("images", "retrieval", "images/s", 4),
    ("texts", "retrieval", "texts/s", 32),
    ("itm", "retrieval", "ITM pairs/s", 4),
    ("caption", "captioning", "captions images/s", 4),
]


def bench_blip(args) -> list[dict]:
    work = Path(getattr(args, "workdir", None) or harness.default_workdir())
    repeats = 1 if getattr(args, "quick", False) else 2
    ckpts = {kind: make_checkpoint(work / f"blip-{kind}-base", kind) for kind in ("retrieval", "captioning")}
    rows = []
    wanted = set((getattr(args, "tasks", None) or ",".join(t[0] for t in TASKS)).split(","))
    for task, kind, label, batch in (t for t in TASKS if t[0] in wanted):
        for dtype in ("fp32", "bf16"):
            r = run_child(__file__, task=task, dtype=dtype, ckpt=ckpts[kind], batch=batch, repeats=repeats)
            ours, reference = r.pop("ours"), r.pop("reference")
            row = rate_row("blip", label, dtype, ours, reference, batch=batch, reference_dtype="fp32", **r)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=harness.default_workdir())
    parser.add_argument("--tasks", help="comma list of images,texts,itm,caption (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("task", "dtype", "ckpt"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    rows = bench_blip(args)
    print_table(rows)
    write_results("encoders_blip" if not args.tasks else f"encoders_blip_{args.tasks.replace(',', '_')}", rows)


if __name__ == "__main__":
    main()
