"""Tiny random GroupViT checkpoints (grouping ViT + CLIP text transformer), made with transformers, and a tiny
CLIP BPE vocabulary (vocab.json + merges.txt) learned from tests/tiny_checkpoints.CORPUS."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from tiny_checkpoints import CORPUS

CLIP_PRETOKENIZE = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def write_clip_bpe(directory: Path, merges_count: int = 150) -> dict[str, Path]:
    """A byte-level BPE in CLIP's format: the 256 byte symbols, the same with `</w>`, learned merges, then
    <|startoftext|> and <|endoftext|>. Every byte is in the vocabulary, so any text (CJK too) encodes."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    normalize = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CLIP_PRETOKENIZE), behavior="removed", invert=True),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    words = Counter(w for line in CORPUS for w, _ in split.pre_tokenize_str(normalize.normalize_str(line)))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = alphabet + [c + "</w>" for c in alphabet]
    spelled = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges = []
    for _ in range(merges_count):
        pairs = Counter()
        for w, symbols in spelled.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += words[w]
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab.append(best[0] + best[1])
        for w, symbols in spelled.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            spelled[w] = tuple(out)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return {"vocab.json": directory / "vocab.json", "merges.txt": directory / "merges.txt"}


def make_tiny_groupvit(out: Path, *, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    """Save a tiny GroupViTModel (three stages, two of them grouping: 8 then 4 group tokens) and its CLIPProcessor."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPProcessor, CLIPTokenizer, GroupViTConfig, GroupViTModel

    out = Path(out)
    slow = write_clip_bpe(out / "_slow")
    tokenizer = CLIPTokenizer.from_pretrained(str(out / "_slow"), model_max_length=16)
    config = GroupViTConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           depths=[1, 1, 1], num_group_tokens=[8, 4, 0], num_output_groups=[8, 4, 4],
                           image_size=32, patch_size=4),
        projection_dim=16, projection_intermediate_dim=48,
    )
    torch.manual_seed(seed)
    model = GroupViTModel(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the heads' normalisation is exercised
        for head in (model.visual_projection, model.text_projection):
            # on the scale of fc1's outputs (weights ~ N(0, 0.02)), so features still differ between inputs
            head[1].running_mean.normal_(0, 0.02)
            head[1].running_var.uniform_(0.005, 0.03)
            head[1].weight.normal_(1, 0.2)
            head[1].bias.normal_(0, 0.2)
        for stage in model.vision_model.encoder.stages:
            if stage.group_token is not None:  # zero-initialised in transformers; make groups distinct
                stage.group_token.normal_(0, 1)
                # peaked assignments (as in a trained model), so segmentation maps have several regions
                stage.downsample.assign.q_proj.weight.normal_(0, 0.3)
                stage.downsample.assign.k_proj.weight.normal_(0, 0.3)
    model.save_pretrained(out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out, slow


def make_groupvit_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(current layout, legacy layout) directories of one tiny GroupViT."""
    from hub_layout import to_legacy_layout

    current, slow_files = make_tiny_groupvit(tmp_path_factory.mktemp("groupvit"))
    legacy = to_legacy_layout(current, tmp_path_factory.mktemp("groupvit_legacy"), slow_tokenizer_files=slow_files)
    shutil.rmtree(current / "_slow")
    return current, legacy
