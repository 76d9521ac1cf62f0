"""Texts in: one Tokenizer interface over every vocabulary format a checkpoint may ship.

`tokenizer.json` (current layout) runs through the `tokenizers` library, whose file already carries the
normaliser, special tokens and post-processor. The older hub layout ships only the "slow" files
(`spiece.model`, `sentencepiece.bpe.model`, `vocab.txt`, `vocab.json` + `merges.txt`); for those,
`tokenizer_config.json`'s `tokenizer_class` picks a builder in SLOW_BUILDERS that reproduces that
tokenizer's rules. Truncation and padding follow `tokenizer_config.json` and the model family.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mmsearch.errors import CheckpointError, InvalidInput


@dataclass
class Encoded:
    input_ids: torch.Tensor       # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64, 1 = real token


class Tokenizer:
    """encode_fn(text, max_length) -> ids with special tokens, truncated; decode_fn(ids) -> text."""

    def __init__(self, encode_fn: Callable[[str, int], list[int]], decode_fn: Callable[[list[int]], str], *,
                 max_length: int, pad_id: int, pad_to_max_length: bool, special_ids: set[int],
                 token_to_id: Callable[[str], int | None]):
        self._encode = encode_fn
        self._decode = decode_fn
        self.max_length = max_length
        self.pad_id = pad_id
        self.pad_to_max_length = pad_to_max_length
        self.special_ids = special_ids
        self.token_to_id = token_to_id

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        if not isinstance(text, str):
            raise InvalidInput(f"texts must be str, got {type(text).__name__}")
        return self._encode(text, max_length or self.max_length)

    def __call__(self, texts: list[str], *, max_length: int | None = None, pad_to_max_length: bool | None = None) -> Encoded:
        limit = max_length or self.max_length
        rows = [self.encode(t, limit) for t in texts]
        to_max = self.pad_to_max_length if pad_to_max_length is None else pad_to_max_length
        return self.pad(rows, limit if to_max else None)

    def pad(self, rows: list[list[int]], width: int | None = None) -> Encoded:
        """Rows of token ids, right-padded to `width` (default: the longest row), with their attention mask."""
        width = max((len(r) for r in rows), default=0) if width is None else width
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return Encoded(ids, mask)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self._decode(list(ids))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc


def _token_str(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def tokenizer_settings(directory: Path) -> dict:
    """tokenizer_config.json merged with special_tokens_map.json (old layout keeps specials there)."""
    config = _read_json(directory / "tokenizer_config.json")
    for key, value in _read_json(directory / "special_tokens_map.json").items():
        config.setdefault(key, value)
    return config


def _model_max_length(config: dict, default: int) -> int:
    value = config.get("model_max_length")
    # transformers writes a huge sentinel (1e30) when the checkpoint sets no limit
    if isinstance(value, (int, float)) and 0 < value < 1_000_000:
        return int(value)
    return default


def load_tokenizer(directory: str | Path, *, default_max_length: int, pad_to_max_length: bool = False,
                   max_length: int | None = None) -> Tokenizer:
    """The checkpoint's tokenizer. `default_max_length` (the model's position limit) applies when the
    tokenizer config sets none; `pad_to_max_length` for models trained on fixed-length text (SigLIP)."""
    directory = Path(directory)
    config = tokenizer_settings(directory)
    limit = max_length or _model_max_length(config, default_max_length)
    if (directory / "tokenizer.json").is_file():
        return _fast_tokenizer(directory / "tokenizer.json", config, limit, pad_to_max_length)
    cls = (config.get("tokenizer_class") or "").removesuffix("Fast")
    builder = SLOW_BUILDERS.get(cls)
    if builder is None:
        present = sorted(p.name for p in directory.iterdir() if p.suffix in (".model", ".txt", ".json"))
        raise CheckpointError(f"{directory}: no tokenizer.json and no reader for tokenizer_class {cls or '(unset)'!r} "
                              f"(files: {', '.join(present)})")
    return builder(directory, config, limit, pad_to_max_length)


def _fast_tokenizer(path: Path, config: dict, limit: int, pad_to_max_length: bool) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable tokenizer ({exc})") from exc
    return _wrap_tokenizers(tok, config, limit, pad_to_max_length)


def _wrap_tokenizers(tok, config: dict, limit: int, pad_to_max_length: bool,
                     decode: Callable[[list[int]], str] | None = None) -> Tokenizer:
    """Our Tokenizer over a `tokenizers.Tokenizer` (loaded from tokenizer.json or built from slow files)."""
    tok.no_padding()
    tok.no_truncation()
    pad = _token_str(config.get("pad_token"))
    pad_id = tok.token_to_id(pad) if pad else None
    special_ids = {tok.token_to_id(t.content) for t in tok.get_added_tokens_decoder().values() if t.special}

    def encode(text: str, max_length: int) -> list[int]:
        if tok.truncation is None or tok.truncation["max_length"] != max_length:
            tok.enable_truncation(max_length)
        return tok.encode(text, add_special_tokens=True).ids

    return Tokenizer(encode, decode or (lambda ids: tok.decode(ids, skip_special_tokens=False)), max_length=limit,
                     pad_id=pad_id if pad_id is not None else 0, pad_to_max_length=pad_to_max_length,
                     special_ids={i for i in special_ids if i is not None}, token_to_id=tok.token_to_id)


def _special_tokens(config: dict) -> dict[str, dict]:
    """Special/added token strings -> their AddedToken flags (lstrip/rstrip)."""
    found: dict[str, dict] = {}
    for entry in (config.get("added_tokens_decoder") or {}).values():
        found[entry["content"]] = entry
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        value = config.get(key)
        content = _token_str(value)
        if content and content not in found:
            found[content] = value if isinstance(value, dict) else {"content": content}
    return found


def split_on_special(text: str, specials: dict[str, dict]) -> list[tuple[str, bool]]:
    """Split text around special-token strings (longest first) -> [(piece, is_special)], honouring
    each token's lstrip/rstrip like transformers' added-token handling."""
    if not specials:
        return [(text, False)]
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    pieces = [p for p in re.split(pattern, text)]
    out: list[list] = [[p, p in specials] for p in pieces]
    for i, (piece, special) in enumerate(out):
        if not special:
            continue
        flags = specials[piece]
        if flags.get("rstrip") and i + 1 < len(out):
            out[i + 1][0] = out[i + 1][0].lstrip()
        if flags.get("lstrip") and i > 0:
            out[i - 1][0] = out[i - 1][0].rstrip()
    return [(p, s) for p, s in out if p]


SPIECE_UNDERLINE = "\u2581"


def _siglip_sentencepiece(directory: Path, config: dict, limit: int, pad_to_max_length: bool) -> Tokenizer:
    """SigLIP's slow tokenizer: canonicalise (lower-case, drop punctuation, fold spaces), sentencepiece
    with the unk-prefix trick, then `</s>`."""
    import sentencepiece as spm

    model_path = directory / "spiece.model"
    if not model_path.is_file():
        raise CheckpointError(f"{directory}: tokenizer_class SiglipTokenizer needs spiece.model, which is missing")
    sp = spm.SentencePieceProcessor()
    sp.Load(str(model_path))
    lower = config.get("do_lower_case", True)
    unk = _token_str(config.get("unk_token")) or "<unk>"
    eos = _token_str(config.get("eos_token")) or "</s>"
    pad = _token_str(config.get("pad_token")) or eos
    specials = _special_tokens(config)
    unk_len = len(sp.encode(unk, out_type=str))
    punctuation = str.maketrans("", "", string.punctuation)

    def piece_ids(chunk: str) -> list[str]:
        if lower:
            chunk = chunk.lower()
        chunk = re.sub(r"\s+", " ", chunk.translate(punctuation)).strip()
        pieces = sp.encode(unk + chunk, out_type=str)
        return pieces[unk_len:] if len(pieces) >= unk_len else pieces

    def to_id(token: str) -> int:
        return sp.piece_to_id(token)

    def encode(text: str, max_length: int) -> list[int]:
        tokens: list[str] = []
        for piece, special in split_on_special(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), specials):
            tokens.extend([piece] if special else piece_ids(piece))
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in specials:
            tokens = tokens[1:]
        ids = [to_id(t) for t in tokens][: max_length - 1]
        return ids + [to_id(eos)]

    special_ids = {to_id(t) for t in specials}
    return Tokenizer(encode, lambda ids: sp.decode(ids), max_length=limit, pad_id=to_id(pad),
                     pad_to_max_length=pad_to_max_length, special_ids=special_ids,
                     token_to_id=lambda t: to_id(t))


def _added_special_tokens(tok, specials: dict[str, dict]) -> None:
    """Register special-token strings with their AddedToken flags, as transformers does when it loads slow files."""
    from tokenizers import AddedToken

    tok.add_special_tokens([
        AddedToken(content, lstrip=bool(flags.get("lstrip", False)), rstrip=bool(flags.get("rstrip", False)),
                   single_word=bool(flags.get("single_word", False)), normalized=False, special=True)
        for content, flags in specials.items()])


def _xlm_roberta_sentencepiece(directory: Path, config: dict, limit: int, pad_to_max_length: bool) -> Tokenizer:
    """XLM-R's slow files (`sentencepiece.bpe.model`, a unigram model) rebuilt the way transformers converts them:
    the fairseq id layout (<s>=0, <pad>=1, </s>=2, <unk>=3, sentencepiece ids + 1, <mask> last), the model's
    precompiled normaliser, whitespace split + metaspace, and `<s> ... </s>` around each text."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Tokenizer as HFTokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    model_path = directory / "sentencepiece.bpe.model"
    if not model_path.is_file():
        raise CheckpointError(f"{directory}: tokenizer_class XLMRobertaTokenizer needs sentencepiece.bpe.model, which is missing")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_path.read_bytes())
    except Exception as exc:
        raise CheckpointError(f"{model_path}: not a sentencepiece model ({exc})") from exc
    names = {key: _token_str(config.get(f"{key}_token")) or default for key, default in
             (("bos", "<s>"), ("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>"), ("mask", "<mask>"))}
    # fairseq reserved the first four ids; sentencepiece's own <unk>, <s>, </s> (pieces 0-2) are dropped
    vocab = [(names[k], 0.0) for k in ("bos", "pad", "eos", "unk")]
    vocab += [(piece.piece, piece.score) for piece in proto.pieces[3:]]
    vocab.append((names["mask"], 0.0))
    tok = HFTokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    if proto.normalizer_spec.precompiled_charsmap:
        tok.normalizer = normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)
    prepend = "always" if config.get("add_prefix_space", True) else "never"
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme=prepend)])
    tok.decoder = decoders.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme=prepend)
    specials = _special_tokens(config)
    for key in ("bos", "pad", "eos", "unk", "mask"):
        specials.setdefault(names[key], {"content": names[key]})
    _added_special_tokens(tok, specials)
    bos, eos = names["bos"], names["eos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))])
    config = {"pad_token": names["pad"], **config}
    return _wrap_tokenizers(tok, config, limit, pad_to_max_length)


CLIP_PRETOKENIZE = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _clip_bpe(directory: Path, config: dict, limit: int, pad_to_max_length: bool) -> Tokenizer:
    """CLIP's slow files (`vocab.json` + `merges.txt`): NFC, whitespace folded, lower-cased; CLIP's word regex;
    byte-level BPE with `</w>` word ends; `<|startoftext|> ... <|endoftext|>`."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise CheckpointError(f"{directory}: tokenizer_class CLIPTokenizer needs vocab.json and merges.txt; "
                                  f"{path.name} is missing")
    vocab = _read_json(vocab_path)
    merges = []
    for number, line in enumerate(merges_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{merges_path}:{number}: expected two symbols per merge, got {line!r}")
        merges.append((parts[0], parts[1]))
    names = {key: _token_str(config.get(f"{key}_token")) or default for key, default in
             (("bos", "<|startoftext|>"), ("eos", "<|endoftext|>"), ("unk", "<|endoftext|>"), ("pad", "<|endoftext|>"))}
    tok = HFTokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                          end_of_word_suffix="</w>", fuse_unk=False, unk_token=names["unk"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PRETOKENIZE), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    specials = _special_tokens(config)
    for key in ("bos", "eos", "unk", "pad"):
        specials.setdefault(names[key], {"content": names[key]})
    _added_special_tokens(tok, specials)
    bos, eos = names["bos"], names["eos"]
    if tok.token_to_id(bos) is None or tok.token_to_id(eos) is None:
        raise CheckpointError(f"{vocab_path}: special tokens {bos!r} / {eos!r} are not in the vocabulary")
    tok.post_processor = processors.RobertaProcessing((eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)),
                                                      trim_offsets=False, add_prefix_space=False)
    config = {"pad_token": names["pad"], **config}
    # byte-level BPE decodes "</w>" word ends as spaces
    return _wrap_tokenizers(tok, config, limit, pad_to_max_length,
                            decode=lambda ids: tok.decode(ids, skip_special_tokens=False).replace("</w>", " ").strip())


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{path}:{number}: expected two symbols per merge, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _added_tokens_file(directory: Path, specials: dict[str, dict]) -> None:
    """Old layouts list tokens added after training (e.g. BLIP-2's `<image>`) in added_tokens.json."""
    for content in _read_json(directory / "added_tokens.json"):
        specials.setdefault(content, {"content": content})


def _gpt2_bpe(directory: Path, config: dict, limit: int, pad_to_max_length: bool) -> Tokenizer:
    """GPT-2 / OPT slow files (`vocab.json` + `merges.txt`): byte-level BPE without normalisation; OPT's
    config sets add_bos_token, which puts `</s>` (its bos) in front of every text."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise CheckpointError(f"{directory}: tokenizer_class GPT2Tokenizer needs vocab.json and merges.txt; "
                                  f"{path.name} is missing")
    tok = HFTokenizer(BPE(vocab=_read_json(vocab_path), merges=_read_merges(merges_path), dropout=None,
                          continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    tok.decoder = decoders.ByteLevel()
    specials = _special_tokens(config)
    _added_tokens_file(directory, specials)
    _added_special_tokens(tok, specials)
    bos, eos = _token_str(config.get("bos_token")) or "<|endoftext|>", _token_str(config.get("eos_token")) or "<|endoftext|>"
    single, used = ["$A"], {}
    if config.get("add_bos_token"):
        single, used[bos] = [bos] + single, tok.token_to_id(bos)
    if config.get("add_eos_token"):
        single, used[eos] = single + [eos], tok.token_to_id(eos)
    if any(i is None for i in used.values()):
        raise CheckpointError(f"{vocab_path}: special tokens {sorted(used)} are not all in the vocabulary")
    if used:
        tok.post_processor = processors.TemplateProcessing(single=" ".join(single), special_tokens=list(used.items()))
    return _wrap_tokenizers(tok, config, limit, pad_to_max_length)


def _t5_sentencepiece(directory: Path, config: dict, limit: int, pad_to_max_length: bool) -> Tokenizer:
    """T5 / Flan-T5 slow files (`spiece.model`) rebuilt the way transformers converts them: the unigram pieces
    and scores, then `extra_ids` sentinels (<extra_id_0> last), the model's precompiled normaliser (no
    lower-casing or punctuation stripping, unlike SigLIP), whitespace split + metaspace, and `</s>` appended."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Tokenizer as HFTokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    model_path = directory / "spiece.model"
    if not model_path.is_file():
        raise CheckpointError(f"{directory}: tokenizer_class T5Tokenizer needs spiece.model, which is missing")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_path.read_bytes())
    except Exception as exc:
        raise CheckpointError(f"{model_path}: not a sentencepiece model ({exc})") from exc
    listed = [t for t in (_token_str(x) for x in config.get("additional_special_tokens") or []) if t and "<extra_id_" in t]
    extra_ids = len(listed) if listed else int(config.get("extra_ids", 100))
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]
    tok = HFTokenizer(Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    if proto.normalizer_spec.precompiled_charsmap:
        tok.normalizer = normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="always", split=True)])
    tok.decoder = decoders.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="always", split=True)
    names = {key: _token_str(config.get(f"{key}_token")) or default
             for key, default in (("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>"))}
    specials = _special_tokens(config)
    for content in [*names.values(), *(f"<extra_id_{i}>" for i in range(extra_ids))]:
        specials.setdefault(content, {"content": content})
    _added_tokens_file(directory, specials)
    _added_special_tokens(tok, specials)
    eos = names["eos"]
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                       special_tokens=[(eos, tok.token_to_id(eos))])
    return _wrap_tokenizers(tok, {"pad_token": names["pad"], **config}, limit, pad_to_max_length)


def _bert_wordpiece(directory: Path, config: dict, limit: int, pad_to_max_length: bool) -> Tokenizer:
    """BERT's slow file (`vocab.txt`) rebuilt the way transformers converts it: BertNormalizer (clean text,
    CJK spacing, lower-case and accent stripping per the config), BERT pre-tokenizer, WordPiece, and
    `[CLS] ... [SEP]`. Tokens added after training (BLIP's [DEC] bos and [ENC]) come from added_tokens.json /
    added_tokens_decoder with the ids recorded there."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab_path = directory / "vocab.txt"
    if not vocab_path.is_file():
        raise CheckpointError(f"{directory}: tokenizer_class BertTokenizer needs vocab.txt, which is missing")
    with vocab_path.open(encoding="utf-8") as f:  # one token per line, id = line number (as transformers reads it)
        vocab = {line.rstrip("\n"): index for index, line in enumerate(f.readlines())}
    unk = _token_str(config.get("unk_token")) or "[UNK]"
    tok = HFTokenizer(WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    lower = config.get("do_lower_case", True)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
                                                strip_accents=config.get("strip_accents"), lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")

    specials = _special_tokens(config)
    for key in ("additional_special_tokens", "extra_special_tokens"):
        for value in config.get(key) or []:
            specials.setdefault(_token_str(value), value if isinstance(value, dict) else {"content": _token_str(value)})
    declared = {content: int(i) for content, i in _read_json(directory / "added_tokens.json").items()}
    declared.update({entry["content"]: int(i) for i, entry in (config.get("added_tokens_decoder") or {}).items()})
    for content in declared:
        specials.setdefault(content, {"content": content})
    # tokens outside vocab.txt get the next ids in the order they were added, so add them by recorded id
    order = sorted(specials, key=lambda c: (c not in vocab, declared.get(c, 1 << 62)))
    _added_special_tokens(tok, {c: specials[c] for c in order})
    wrong = {c: (i, tok.token_to_id(c)) for c, i in declared.items() if tok.token_to_id(c) != i}
    if wrong:
        raise CheckpointError(f"{directory}: added tokens do not follow vocab.txt ({len(vocab)} tokens): "
                              + ", ".join(f"{c} recorded as {i}, would be {j}" for c, (i, j) in wrong.items()))
    cls, sep = _token_str(config.get("cls_token")) or "[CLS]", _token_str(config.get("sep_token")) or "[SEP]"
    if tok.token_to_id(cls) is None or tok.token_to_id(sep) is None:
        raise CheckpointError(f"{vocab_path}: {cls} / {sep} are not in the vocabulary")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return _wrap_tokenizers(tok, config, limit, pad_to_max_length)


# tokenizer_class (without "Fast") -> builder(directory, tokenizer settings, max_length, pad_to_max_length)
SLOW_BUILDERS: dict[str, Callable[[Path, dict, int, bool], Tokenizer]] = {
    "SiglipTokenizer": _siglip_sentencepiece,
    "XLMRobertaTokenizer": _xlm_roberta_sentencepiece,
    "CLIPTokenizer": _clip_bpe,
    "GPT2Tokenizer": _gpt2_bpe,
    "T5Tokenizer": _t5_sentencepiece,
    "BertTokenizer": _bert_wordpiece,
}
