"""Tiny random CLIP checkpoints (CLIPModel + CLIPProcessor), made with transformers at test time, in the current
layout, the older hub layout (slow tokenizer files, pytorch_model.bin, preprocessor_config.json), and with the
older config.json forms real snapshots carry (`text_config_dict` / `vision_config_dict`, eos_token_id=2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tiny_groupvit import write_clip_bpe

PROJECTION_DIM = 16
EXTRA_TOKEN = "<|extra|>"


def make_tiny_clip(out: Path, *, seed: int = 0, hidden_act: str = "quick_gelu", pad_token: str | None = None,
                   projection_dim: int = PROJECTION_DIM):
    """Save a tiny CLIPModel and its CLIPProcessor in `out`; returns (out, slow tokenizer files).
    `pad_token="!"` pads the way the laion/CLIP-ViT-* tokenizers do (an ordinary token, not <|endoftext|>)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = Path(out)
    slow = write_clip_bpe(out.parent / f"{out.name}_bpe")
    extra = {"pad_token": pad_token} if pad_token else {}
    tokenizer = CLIPTokenizer.from_pretrained(str(slow["vocab.json"].parent), model_max_length=16, **extra)
    # a token added after training has an id above <|endoftext|>: old configs (eos_token_id=2) then pool elsewhere
    tokenizer.add_tokens([EXTRA_TOKEN])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, hidden_act=hidden_act,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act=hidden_act),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out, slow


def with_legacy_config(src: Path, dst: Path) -> Path:
    """A copy of `src` whose config.json is written the way openai/clip-vit-* snapshots have it: the towers'
    non-default sizes also under `text_config_dict` / `vision_config_dict` (which transformers completes with
    the class defaults and lets win), and the pre-#24773 eos_token_id=2 inside `text_config`."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act")
    # the tiny vocabulary's special ids are not CLIP's defaults, so they are named in the dict too
    config["text_config_dict"] = {k: config["text_config"][k] for k in sizes + (
        "vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")}
    config["vision_config_dict"] = {k: config["vision_config"][k] for k in sizes + ("image_size", "patch_size")}
    config["text_config"]["eos_token_id"] = 2  # overridden by text_config_dict
    config["text_config"]["hidden_size"] = 999  # so is this: text_config_dict wins
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def with_old_eos(src: Path, dst: Path) -> Path:
    """A copy whose text config says eos_token_id=2 (configs from before transformers#24773): CLIP then pools
    at the largest token id."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 2
    (dst / "config.json").write_text(json.dumps(config))
    return dst
