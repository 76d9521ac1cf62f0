"""Tiny random AltCLIP checkpoints (CLIP vision tower + XLM-R text encoder), made with transformers."""

from __future__ import annotations

import shutil
from pathlib import Path

from tiny_checkpoints import train_sentencepiece


def make_tiny_altclip(out: Path, *, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    """Save a tiny AltCLIPModel + AltCLIPProcessor to `out` (current layout). Returns the directory and the
    slow tokenizer files (for tests/hub_layout.to_legacy_layout), kept under `out`/_slow."""
    import torch
    from transformers import (AltCLIPConfig, AltCLIPModel, AltCLIPProcessor, CLIPImageProcessorPil,
                              XLMRobertaTokenizer)

    out = Path(out)
    slow = out / "_slow"
    # XLM-R's sentencepiece model keeps sentencepiece's own <unk>, <s>, </s> as its first three pieces
    sp_model = train_sentencepiece(slow, name="sentencepiece.bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    tokenizer = XLMRobertaTokenizer.from_pretrained(str(slow), model_max_length=20)
    config = AltCLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=22, project_dim=24, type_vocab_size=1,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = AltCLIPModel(config).eval()
    model.save_pretrained(out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    AltCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out, {"sentencepiece.bpe.model": sp_model}


def make_altclip_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(current layout, legacy layout) directories of one tiny AltCLIP."""
    from hub_layout import to_legacy_layout

    current, slow_files = make_tiny_altclip(tmp_path_factory.mktemp("altclip"))
    legacy = to_legacy_layout(current, tmp_path_factory.mktemp("altclip_legacy"), slow_tokenizer_files=slow_files)
    shutil.rmtree(current / "_slow")
    return current, legacy
