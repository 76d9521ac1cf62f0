"""AltCLIP and GroupViT throughput: ours vs transformers at the real architecture sizes with random weights (CPU).

    python bench/encoders_altclip.py [--quick]     # standalone: prints the table, writes bench/results/encoders_altclip.json
    python bench/encoders.py --families altclip    # through the lead's driver (calls bench_altclip)

Architectures: BAAI/AltCLIP (CLIP ViT-L/14 at 224 px; XLM-R large text encoder, 250002-token vocabulary; 768-d
projections) and nvidia/groupvit-gcc-yfcc (transformers' GroupViTConfig defaults: 384-wide grouping ViT-S/16 with
64 then 8 groups, 256-wide 12-layer CLIP text transformer, MLP+BatchNorm heads). Texts are batches of 32; AltCLIP
images are batches of 8 (ViT-L/14 takes seconds per image on a small CPU), GroupViT images batches of 32.
Each (family, task, dtype) runs in its own child process that loads both implementations and alternates their
timed calls (best of N after a warm-up), so load changes on a shared machine hit both alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import harness
from harness import alternate, print_table, rate_row, run_child, write_results


ALTCLIP_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14, projection_dim=768)
ALTCLIP_TEXT = dict(vocab_size=250002, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, max_position_embeddings=514, project_dim=768, pad_token_id=1)


def make_altclip(directory: Path) -> Path:
    """BAAI/AltCLIP sizes, random weights; a small sentencepiece vocabulary (ids fit the full embedding table)."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import AltCLIPConfig, AltCLIPModel, AltCLIPProcessor, CLIPImageProcessorPil, XLMRobertaTokenizer
    from tiny_checkpoints import train_sentencepiece

    slow = directory.parent / f"{directory.name}_sp"
    train_sentencepiece(slow, name="sentencepiece.bpe", vocab_size=400, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    tokenizer = XLMRobertaTokenizer.from_pretrained(str(slow), model_max_length=512)
    torch.manual_seed(0)
    config = AltCLIPConfig(text_config=ALTCLIP_TEXT, vision_config=ALTCLIP_VISION, projection_dim=768)
    AltCLIPModel(config).eval().save_pretrained(directory)
    AltCLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def make_groupvit(directory: Path) -> Path:
    """nvidia/groupvit-gcc-yfcc sizes (GroupViTConfig defaults), random weights, a small CLIP BPE vocabulary."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import CLIPImageProcessorPil, CLIPProcessor, CLIPTokenizer, GroupViTConfig, GroupViTModel
    from tiny_groupvit import write_clip_bpe

    slow = directory.parent / f"{directory.name}_bpe"
    write_clip_bpe(slow, merges_count=400)
    tokenizer = CLIPTokenizer.from_pretrained(str(slow), model_max_length=77)
    torch.manual_seed(0)
    config = GroupViTConfig(text_config=dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model = GroupViTModel(config).eval()
    with torch.no_grad():  # transformers zero-initialises group tokens; trained ones are distinct, so
        for stage in model.vision_model.encoder.stages:  # groups are not near-ties (which bf16 would flip)
            if stage.group_token is not None:
                stage.group_token.normal_(0, 1)
    model.save_pretrained(directory)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def child(args) -> dict:
    import torch
    from transformers import AltCLIPModel, AutoProcessor, GroupViTModel

    import encoders
    from images import random_image

    torch.manual_seed(0)
    ckpt, n = Path(args.ckpt), args.batch
    reference_cls = {"altclip": AltCLIPModel, "groupvit": GroupViTModel}[args.family]
    ref = reference_cls.from_pretrained(ckpt, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(ckpt)
    enc = encoders.load(str(ckpt), dtype={"fp32": "float32", "bf16": "bfloat16"}[args.dtype])
    normalize = lambda t: torch.nn.functional.normalize(t.float(), dim=-1).numpy()
    if args.task == "images":
        pixels = processor(images=[random_image(640, 480, seed=i) for i in range(n)], return_tensors="pt")["pixel_values"]
        ours = lambda: enc.encode_pixels(pixels)

        def reference():
            with torch.inference_mode():
                return normalize(ref.get_image_features(pixel_values=pixels).pooler_output)
    else:
        texts = [" ".join(["a photo of a red circle on a white background"] * (1 + i % 3)) for i in range(n)]
        ours = lambda: enc.encode_texts(texts)

        def reference():
            with torch.inference_mode():
                tok = processor(text=texts, padding=True, truncation=True, return_tensors="pt")
                return normalize(ref.get_text_features(**tok).pooler_output)

    seconds = alternate({"ours": ours, "reference": reference}, args.repeats)
    a, b = ours(), reference()
    return dict(ours=n / seconds["ours"], reference=n / seconds["reference"],
                cosine_vs_reference_fp32=float((a * b).sum(axis=1).min()))


TASKS = [  # (family, task, row label, batch)
    ("altclip", "images", "images/s", 8),
    ("altclip", "texts", "texts/s", 32),
    ("groupvit", "images", "images/s", 32),
    ("groupvit", "texts", "texts/s", 32),
]


def bench_altclip(args) -> list[dict]:
    """Rows for AltCLIP and GroupViT (the lead's bench/encoders.py calls this)."""
    work = Path(getattr(args, "workdir", None) or harness.default_workdir())
    work.mkdir(parents=True, exist_ok=True)
    repeats = 1 if getattr(args, "quick", False) else 2
    ckpts = {"altclip": make_altclip(work / "altclip-large"), "groupvit": make_groupvit(work / "groupvit-gcc-yfcc")}
    rows = []
    for family, task, label, batch in TASKS:
        for dtype in ("fp32", "bf16"):
            r = run_child(__file__, family=family, task=task, dtype=dtype, ckpt=ckpts[family], batch=batch, repeats=repeats)
            ours, reference = r.pop("ours"), r.pop("reference")
            row = rate_row(family, label, dtype, ours, reference, batch=batch, reference_dtype="fp32", **r)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timed repeat instead of two")
    parser.add_argument("--workdir", default=harness.default_workdir())
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("family", "task", "dtype", "ckpt"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = bench_altclip(args)
    print_table(rows)
    write_results("encoders_altclip", rows)


if __name__ == "__main__":
    main()
