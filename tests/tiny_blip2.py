"""Tiny random BLIP-2 checkpoints made with transformers (the reference) at test time: an ITM retrieval
model (Q-Former with text input, BERT vocab.txt), and captioning models with an OPT (byte-level BPE
vocab.json + merges.txt) or a T5 (spiece.model) language model. Each builder returns the save_pretrained
directory and the slow tokenizer files that hub_layout.to_legacy_layout needs."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_checkpoints import CORPUS, train_sentencepiece

NUM_QUERY_TOKENS = 8
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              initializer_range=0.2,  # the class default (1e-10) makes every image look the same
              patch_size=8)
QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
               cross_attention_frequency=2, max_position_embeddings=64)


def _image_processor():
    from transformers import BlipImageProcessorPil

    return BlipImageProcessorPil(size={"height": 32, "width": 32})


def train_wordpiece(directory: Path) -> Path:
    """A BERT vocab.txt over CORPUS (lower-cased, accents stripped: bert-base-uncased rules)."""
    from tokenizers import BertWordPieceTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tok = BertWordPieceTokenizer(lowercase=True, strip_accents=True)
    tok.train_from_iterator(CORPUS * 5, vocab_size=300, min_frequency=1)
    tok.save_model(str(directory))
    return directory / "vocab.txt"


def train_byte_bpe(directory: Path) -> tuple[Path, Path]:
    """GPT-2 style byte-level BPE with OPT's special tokens at ids 0-3 (<s>, <pad>, </s>, <unk>)."""
    from tokenizers import ByteLevelBPETokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS * 5, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.save_model(str(directory))
    return directory / "vocab.json", directory / "merges.txt"


def _finish(out: Path, model, processor, tokenizer_class: str, **tokenizer_settings) -> None:
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # real hub snapshots name the slow class and settings (OPT: add_bos_token) that transformers 5 keeps
    # inside tokenizer.json instead; the legacy layout needs them in tokenizer_config.json
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = tokenizer_class
    cfg.update(tokenizer_settings)
    cfg_path.write_text(json.dumps(cfg, indent=2))


def _random_model(model_cls, tokenizer, seed: int, **config):
    """A seeded random BLIP-2 of `model_cls` over the shared tiny vision tower. transformers initialises the
    query tokens to zero; random values exercise them."""
    import torch
    from transformers import Blip2Config

    config = Blip2Config(vision_config=VISION, num_query_tokens=NUM_QUERY_TOKENS, initializer_range=0.2,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), **config)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0, 0.5)
    return model


def make_tiny_blip2_itm(out: Path, *, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    from transformers import BertTokenizer, Blip2ForImageTextRetrieval, Blip2Processor

    out = Path(out)
    vocab = train_wordpiece(out.parent / f"{out.name}_vocab")
    tokenizer = BertTokenizer(str(vocab), model_max_length=64)
    processor = Blip2Processor(_image_processor(), tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    model = _random_model(Blip2ForImageTextRetrieval, tokenizer, seed, image_text_hidden_size=16,
                          qformer_config=dict(QFORMER, vocab_size=len(tokenizer), use_qformer_text_input=True))
    _finish(out, model, processor, "BertTokenizer")
    return out, {"vocab.txt": vocab}


def make_tiny_blip2_opt(out: Path, *, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, GPT2Tokenizer

    out = Path(out)
    vocab, merges = train_byte_bpe(out.parent / f"{out.name}_bpe")
    tokenizer = GPT2Tokenizer(vocab=json.loads(vocab.read_text()), merges=_read_merges(merges), bos_token="</s>",
                              eos_token="</s>", unk_token="</s>", pad_token="<pad>", add_bos_token=True)
    processor = Blip2Processor(_image_processor(), tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    text = dict(model_type="opt", vocab_size=len(tokenizer) + 3, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=1, init_std=0.2,
                bos_token_id=2, eos_token_id=2)
    model = _random_model(Blip2ForConditionalGeneration, tokenizer, seed, qformer_config=QFORMER, text_config=text)
    _finish(out, model, processor, "GPT2Tokenizer", add_bos_token=True)
    return out, {"vocab.json": vocab, "merges.txt": merges}


def make_tiny_blip2_t5(out: Path, *, gated: bool = True, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    """gated=True: Flan-T5 style (gated-gelu, separate lm_head); False: original T5 (relu, tied lm_head)."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, T5Tokenizer

    out = Path(out)
    sp_model = train_sentencepiece(out.parent / f"{out.name}_sp", vocab_size=200)
    tokenizer = T5Tokenizer.from_pretrained(str(sp_model.parent), extra_ids=10, model_max_length=64)
    processor = Blip2Processor(_image_processor(), tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    text = dict(model_type="t5", vocab_size=len(tokenizer) + 2, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                num_heads=4, relative_attention_num_buckets=8,
                relative_attention_max_distance=20, feed_forward_proj="gated-gelu" if gated else "relu",
                tie_word_embeddings=not gated, initializer_factor=4.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = _random_model(Blip2ForConditionalGeneration, tokenizer, seed, qformer_config=QFORMER, text_config=text)
    _finish(out, model, processor, "T5Tokenizer")
    return out, {"spiece.model": sp_model}


def _read_merges(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
