"""AltCLIP and GroupViT throughput: ours vs transformers at the real architecture sizes with random weights (CPU).

    python bench/encoders.py --families altclip [--quick]    # writes bench/results/encoders_altclip.json

Architectures: BAAI/AltCLIP (CLIP ViT-L/14 at 224 px; XLM-R large text encoder, 250002-token vocabulary; 768-d
projections) and nvidia/groupvit-gcc-yfcc (transformers' GroupViTConfig defaults: 384-wide grouping ViT-S/16 with
64 then 8 groups, 256-wide 12-layer CLIP text transformer, MLP+BatchNorm heads). Texts are batches of 32; AltCLIP
images are batches of 8 (ViT-L/14 takes seconds per image on a small CPU), GroupViT images batches of 32.
Each (family, task, dtype) runs in its own child process that loads both implementations and interleaves their
timed calls round by round (harness.compare; bf16 rows: transformers in bf16 and in fp32 beside it).
"""

from __future__ import annotations

import sys
from pathlib import Path


import harness
from harness import DTYPE_GOALS, against, compare, compare_row, reference_calls, run_child


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
    processor = AutoProcessor.from_pretrained(ckpt)
    enc = encoders.load(str(ckpt), dtype={"fp32": "float32", "bf16": "bfloat16"}[args.dtype])
    normalize = lambda t: torch.nn.functional.normalize(t.float(), dim=-1).numpy()
    pixels = processor(images=[random_image(640, 480, seed=i) for i in range(n)], return_tensors="pt")["pixel_values"]
    texts = [" ".join(["a photo of a red circle on a white background"] * (1 + i % 3)) for i in range(n)]
    ours = (lambda: enc.encode_pixels(pixels)) if args.task == "images" else (lambda: enc.encode_texts(texts))

    def transformers_call(torch_dtype):
        ref = reference_cls.from_pretrained(ckpt, dtype=torch_dtype).eval()

        def run():
            with torch.inference_mode():
                if args.task == "images":
                    return normalize(ref.get_image_features(pixel_values=pixels.to(torch_dtype)).pooler_output)
                tok = processor(text=texts, padding=True, truncation=True, return_tensors="pt")
                return normalize(ref.get_text_features(**tok).pooler_output)
        return run

    calls = {"ours": ours, **reference_calls(args.dtype, transformers_call)}
    out = compare(calls, n, args.rounds, against(calls))
    a, b = ours(), calls.get("transformers_fp32", calls["transformers"])()
    return {**out, "cosine_vs_reference_fp32": float((a * b).sum(axis=1).min())}


TASKS = [  # (family, task, row label, batch, --quick batch)
    ("altclip", "images", "images/s", 8, 2),
    ("altclip", "texts", "texts/s", 32, 16),
    ("groupvit", "images", "images/s", 32, 8),
    ("groupvit", "texts", "texts/s", 32, 32),
]


def bench_altclip(args) -> list[dict]:
    """Rows for AltCLIP and GroupViT (bench/encoders.py calls this)."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpts = {"altclip": make_altclip(work / "altclip-large"), "groupvit": make_groupvit(work / "groupvit-gcc-yfcc")}
    rows = []
    for family, task, label, batch, quick_batch in TASKS:
        for dtype in ("fp32", "bf16"):
            n = quick_batch if args.quick else batch
            r = run_child(__file__, family=family, task=task, dtype=dtype, ckpt=ckpts[family], batch=n,
                          rounds=args.rounds)
            row = compare_row(family, label, dtype, r, goal=DTYPE_GOALS[dtype], batch=n,
                              cosine_vs_reference_fp32=r["cosine_vs_reference_fp32"])
            rows.append(row)
            print({k: v for k, v in row.items() if k != "seconds"}, file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    harness.child_main(child)
