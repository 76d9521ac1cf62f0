"""Builders for tiny random checkpoints, made with transformers (the reference) at test time."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "a photo of a cat", "a red circle on a white background", "two blue squares", "a green triangle",
    "The quick brown fox jumps over the lazy dog.", "un chat noir sur le toit", "ein Hund im Park",
    "一只猫坐在沙发上", "红色的圆形", "蓝色的正方形和绿色的三角形", "café crème brûlée naïve", "¿dónde está la playa?",
    "numbers 0123456789 and symbols #$%&", "an astronaut riding a horse on the moon",
]


def train_sentencepiece(directory: Path, *, model_type: str = "unigram", vocab_size: int = 200,
                        name: str = "spiece", pad_id: int = 0, eos_id: int = 1, unk_id: int = 2, bos_id: int = -1) -> Path:
    """A small sentencepiece model over CORPUS (covers Latin, accents and CJK)."""
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / f"{name}.corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / name), vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, hard_vocab_limit=False, pad_id=pad_id, eos_id=eos_id, unk_id=unk_id,
        bos_id=bos_id, minloglevel=2)
    corpus.unlink()
    (directory / f"{name}.vocab").unlink()
    return directory / f"{name}.model"


def make_tiny_siglip(out: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor, SiglipTokenizer

    out = Path(out)
    sp_model = train_sentencepiece(out / "_sp")
    tokenizer = SiglipTokenizer(str(sp_model), model_max_length=16)
    config = SiglipConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, projection_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    model.save_pretrained(out)
    processor = SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer)
    processor.save_pretrained(out)
    import shutil
    shutil.rmtree(out / "_sp")
    return out
