"""Tiny random BLIP checkpoints (retrieval and captioning), made with transformers at test time."""

from __future__ import annotations

import json
import re
import shutil
import unicodedata
from pathlib import Path

from tiny_checkpoints import CORPUS

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(path: Path) -> Path:
    """A small WordPiece vocab.txt over CORPUS: whole words, single characters and their ## continuations."""
    words, chars = set(), set()
    for line in CORPUS:
        text = "".join(c for c in unicodedata.normalize("NFD", line.lower()) if unicodedata.category(c) != "Mn")
        for word in re.findall(r"\w+|[^\w\s]", text):
            (chars if len(word) == 1 else words).add(word)
            chars.update(word)
    pieces = sorted(words) + sorted(chars) + [f"##{c}" for c in sorted(chars) if c.isalnum()] + ["##ing", "##s"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(SPECIALS + pieces) + "\n", encoding="utf-8")
    return path


def _tokenizer(vocab_file: Path, max_length: int):
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab=str(vocab_file), model_max_length=max_length)
    # as Salesforce built it: [DEC] is the decoder's bos token, [ENC] an extra special token
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


def _config(vocab_size: int, bos_id: int, *, image_size: int = 32, max_positions: int = 40, vision_width: int = 48):
    from transformers import BlipConfig

    return BlipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=max_positions, bos_token_id=bos_id,
                         pad_token_id=0, sep_token_id=3, eos_token_id=2, initializer_range=0.3),
        vision_config=dict(hidden_size=vision_width, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8, initializer_range=0.05),
        image_text_hidden_size=16,
    )


def make_tiny_blip(out: Path, kind: str, *, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny BlipForImageTextRetrieval (kind="retrieval"), BlipForConditionalGeneration ("captioning")
    or BlipForQuestionAnswering ("vqa") with its BlipProcessor in `out` (current layout); returns
    (out, vocab.txt path) so the legacy layout can be written with the slow tokenizer file."""
    import torch
    from transformers import (BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering,
                              BlipImageProcessorPil, BlipProcessor)

    out = Path(out)
    vocab_file = write_vocab(out.parent / f"{out.name}_vocab" / "vocab.txt")
    tokenizer = _tokenizer(vocab_file, max_length=40)
    # transformers' VQA decoder cross-attends to the question through layers sized for the image width, so the
    # two widths must agree (they do in the released checkpoints: 768 and 768)
    config = _config(len(tokenizer), tokenizer.bos_token_id, vision_width=32 if kind == "vqa" else 48)
    torch.manual_seed(seed)
    if kind == "retrieval":
        model = BlipForImageTextRetrieval(config).eval()
    else:
        model = (BlipForConditionalGeneration if kind == "captioning" else BlipForQuestionAnswering)(config).eval()
        with torch.no_grad():
            # random weights rarely pick [SEP]; make it likely enough that some captions / answers end early
            model.text_decoder.cls.predictions.bias[config.text_config.sep_token_id] += 4.0 if kind == "captioning" else 2.0
    model.save_pretrained(out)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(out)
    return out, vocab_file


def legacy_slow_files(vocab_file: Path, tokenizer_dir: Path) -> dict[str, Path]:
    """vocab.txt plus added_tokens.json ([DEC], [ENC]), as the old hub snapshots ship them."""
    added = {}
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    for entry in tok["added_tokens"]:
        if entry["content"] in ("[DEC]", "[ENC]"):
            added[entry["content"]] = entry["id"]
    added_file = vocab_file.parent / "added_tokens.json"
    added_file.write_text(json.dumps(added))
    return {"vocab.txt": vocab_file, "added_tokens.json": added_file}


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst
