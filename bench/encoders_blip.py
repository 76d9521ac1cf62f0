"""BLIP throughput: ours vs transformers at the real architecture sizes with random weights (CPU).

    python bench/encoders.py --families blip [--quick]    # writes bench/results/encoders_blip.json

Architectures: Salesforce/blip-itm-base-coco (ViT-B/16 at 384 px, BERT-base text with cross-attention,
256-d ITC projections) and Salesforce/blip-image-captioning-base (same towers, BERT-base decoder + LM head,
vocabulary 30524). Each (task, dtype) runs in its own child process that loads both implementations and
interleaves their timed calls round by round (harness.compare; bf16 rows: transformers in bf16 and in fp32
beside it). bench/vqa.py builds its checkpoint here too (kind "vqa": Salesforce/blip-vqa-base sizes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import harness
from harness import DTYPE_GOALS, against, compare, compare_row, processor_inputs, reference_calls, run_child


BASE_TEXT = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=512, bos_token_id=30522, pad_token_id=0,
                 sep_token_id=102, eos_token_id=2)
BASE_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=384, patch_size=16, initializer_range=0.02)


def make_checkpoint(directory: Path, kind: str) -> Path:
    """blip-itm-base-coco (kind="retrieval"), blip-image-captioning-base ("captioning") or blip-vqa-base ("vqa")
    sizes, random weights, with a BERT vocab.txt of the real size (the corpus words, then filler tokens)."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval,
                              BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor)
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
    cls = {"retrieval": BlipForImageTextRetrieval, "captioning": BlipForConditionalGeneration,
           "vqa": BlipForQuestionAnswering}[kind]
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
    reference_cls = BlipForConditionalGeneration if args.task == "caption" else BlipForImageTextRetrieval
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]

    if args.task == "images":
        enc = encoders.load(str(ckpt), dtype=dtype)
        ours = lambda: enc.encode_pixels(pixels)
    elif args.task == "texts":
        enc = encoders.load(str(ckpt), dtype=dtype)
        ours = lambda: enc.encode_texts(texts)
    elif args.task == "itm":
        rr = encoders.load_reranker(str(ckpt), dtype=dtype)
        ours = lambda: rr.score(images, texts)
    else:
        cap = encoders.load_captioner(str(ckpt), dtype=dtype)
        ours = lambda: cap.caption(images, max_new_tokens=30)

    def transformers_call(torch_dtype):
        ref = reference_cls.from_pretrained(ckpt, dtype=torch_dtype).eval()

        def run():
            with torch.inference_mode():
                if args.task == "images":
                    hidden = ref.vision_model(pixel_values=pixels.to(torch_dtype)).last_hidden_state
                    return normalize(ref.vision_proj(hidden[:, 0]))
                if args.task == "texts":
                    tok = processor(text=texts, padding=True, truncation=True, return_tensors="pt")
                    hidden = ref.text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
                    return normalize(ref.text_proj(hidden.last_hidden_state[:, 0]))
                inputs = processor_inputs(processor, torch_dtype, images=images, text=texts, padding=True,
                                          truncation=True)
                if args.task == "itm":
                    return ref(**inputs).itm_score.float().softmax(dim=-1)[:, 1].numpy()
                out = ref.generate(pixel_values=inputs["pixel_values"], max_new_tokens=30)
                return processor.batch_decode(out, skip_special_tokens=True)
        return run

    calls = {"ours": ours, **reference_calls(args.dtype, transformers_call)}
    result = compare(calls, n, args.rounds, against(calls))
    a, b = ours(), calls.get("transformers_fp32", calls["transformers"])()
    if args.task in ("images", "texts"):
        result["cosine_vs_reference_fp32"] = float((a * b).sum(axis=1).min())
    elif args.task == "itm":
        result["max_prob_diff_vs_reference_fp32"] = float(np.abs(a - b).max())
    else:
        result["same_captions_as_reference_fp32"] = f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"
    return result


TASKS = [  # (task, checkpoint kind, row label, batch, --quick batch)
    ("images", "retrieval", "images/s", 4, 4),
    ("texts", "retrieval", "texts/s", 32, 16),
    ("itm", "retrieval", "ITM pairs/s", 4, 2),
    ("caption", "captioning", "captions images/s", 4, 2),
]


def bench_blip(args) -> list[dict]:
    work = Path(args.workdir)
    ckpts = {kind: make_checkpoint(work / f"blip-{kind}-base", kind) for kind in ("retrieval", "captioning")}
    rows = []
    for task, kind, label, batch, quick_batch in TASKS:
        for dtype in ("fp32", "bf16"):
            n = quick_batch if args.quick else batch
            r = run_child(__file__, task=task, dtype=dtype, ckpt=ckpts[kind], batch=n, rounds=args.rounds)
            extra = {k: v for k, v in r.items() if k.endswith("_reference_fp32")}
            row = compare_row("blip", label, dtype, r, goal=DTYPE_GOALS[dtype], batch=n, **extra)
            rows.append(row)
            print({k: v for k, v in row.items() if k != "seconds"}, file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    harness.child_main(child)
