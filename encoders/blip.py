"""BLIP (Salesforce/blip-*): a ViT image tower and a BERT text tower that can cross-attend to the image.

One file, four uses of the same checkpoint family:
- retrieval checkpoints (`BlipForImageTextRetrieval`) load as a DualEncoder (ITC: projections of the image
  [CLS] and the text's first token) and as a Reranker (ITM: the text tower cross-attends to the image,
  a 2-way head gives P(match));
- captioning checkpoints (`BlipForConditionalGeneration`) load as a Captioner (a causal BERT decoder with
  cross-attention, greedy or beam search through encoders.generate);
- VQA checkpoints (`BlipForQuestionAnswering`) load as an Answerer (the text tower encodes the question
  against the image; the same decoder generates the answer against the question's states).

The vision tower (`blip_vision` + `vision_rules`) is shared with BLIP-2, whose ViT has the same layout.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from mmsearch.errors import CheckpointError, InvalidInput

from .api import DualEncoder, answerer, captioner, check_generation, dual_encoder, question_pairs, reranker
from .checkpoint import Checkpoint
from .generate import LayerCaches, generate
from .layers import PostNormBlock, TextEmbeddings, activation, causal_padding_mask, padding_mask
from .preprocess import ImagePreprocessor, distinct_images
from .rules import Rule, bert_embedding_rules, bert_layer_rules, build_on_meta, flat, flat_rows, load_model, rows
from .tokenize import Tokenizer, load_tokenizer
from .vit import ViTSpec, VisionTransformer


VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=384, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-5, num_channels=3)


def vision_config(cfg: dict | None, **defaults) -> dict:
    """A vision_config with the transformers class defaults filled in (hub configs omit default values);
    `defaults` override VISION_DEFAULTS (BLIP-2 passes its own)."""
    return {**VISION_DEFAULTS, **defaults, **(cfg or {})}


def vision_spec(cfg: dict | None) -> ViTSpec:
    """BLIP's (and BLIP-2's) ViT: patches with bias, [CLS] + positions, blocks, final LayerNorm over every token.
    The module returns all tokens, (B, 1 + patches, dim); token 0 is the image [CLS] (`.cls()` for it alone)."""
    return ViTSpec.from_config(vision_config(cfg), patch_bias=True, class_token=True)


def blip_vision(cfg: dict | None) -> VisionTransformer:
    return VisionTransformer(vision_spec(cfg))


def vision_rules(ours: str, theirs: str, qkv_bias: str = "fused") -> list[Rule]:
    """Checkpoint rules for a BLIP vision tower (`blip_vision`) at prefix `ours` stored at `theirs` (e.g. "vision_model").

    The checkpoint keeps q/k/v as one `self_attn.qkv` matrix (split here into our q/k/v rows) and the output
    projection as `self_attn.projection`. qkv_bias says where the q/k/v biases are:
      "fused" - `self_attn.qkv.bias` (BLIP, and BLIP-2 saved by transformers >= 5);
      "qv"    - `self_attn.q_bias` + `self_attn.v_bias`, key bias zero (BLIP-2 as on the hub)."""
    o, t = (ours.replace(".", r"\.") + r"\.") if ours else "", theirs
    layers = f"{t}.encoder.layers"
    rules = [
        Rule(rf"{o}patch_embed\.proj\.(weight|bias)", rf"{t}.embeddings.patch_embedding.\1"),
        Rule(rf"{o}class_token", f"{t}.embeddings.class_embedding", flat),
        Rule(rf"{o}pos_embed", f"{t}.embeddings.position_embedding", flat_rows),
        Rule(rf"{o}blocks\.(\d+)\.norm(1|2)\.(weight|bias)", rf"{layers}.\1.layer_norm\2.\3"),
        Rule(rf"{o}blocks\.(\d+)\.attn\.out_proj\.(weight|bias)", rf"{layers}.\1.self_attn.projection.\2"),
        Rule(rf"{o}blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", rf"{layers}.\1.mlp.\2.\3"),
        Rule(rf"{o}norm\.(weight|bias)", rf"{t}.post_layernorm.\1"),
    ]
    rules += [Rule(rf"{o}blocks\.(\d+)\.attn\.{p}_proj\.weight", rf"{layers}.\1.self_attn.qkv.weight", rows(i, 3))
              for i, p in enumerate("qkv")]
    if qkv_bias == "fused":
        rules += [Rule(rf"{o}blocks\.(\d+)\.attn\.{p}_proj\.bias", rf"{layers}.\1.self_attn.qkv.bias", rows(i, 3))
                  for i, p in enumerate("qkv")]
    elif qkv_bias == "qv":
        rules += [Rule(rf"{o}blocks\.(\d+)\.attn\.q_proj\.bias", rf"{layers}.\1.self_attn.q_bias"),
                  Rule(rf"{o}blocks\.(\d+)\.attn\.k_proj\.bias", rf"{layers}.\1.self_attn.q_bias", torch.zeros_like),
                  Rule(rf"{o}blocks\.(\d+)\.attn\.v_proj\.bias", rf"{layers}.\1.self_attn.v_bias")]
    else:
        raise ValueError(f"qkv_bias must be 'fused' or 'qv', not {qkv_bias!r}")
    return rules



TEXT_DEFAULTS = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=512, hidden_act="gelu", layer_norm_eps=1e-12,
                     bos_token_id=30522, eos_token_id=2, pad_token_id=0, sep_token_id=102, is_decoder=True)


def text_config(config: dict) -> dict:
    return {**TEXT_DEFAULTS, **(config.get("text_config") or {})}


class BlipText(nn.Module):
    """BERT text tower; with cross_dim, every layer also cross-attends to image tokens (ITM, captioning)."""

    def __init__(self, cfg: dict, cross_dim: int | None = None):
        super().__init__()
        dim = cfg["hidden_size"]
        self.embed = TextEmbeddings(cfg["vocab_size"], dim, cfg["max_position_embeddings"], eps=cfg["layer_norm_eps"])
        self.blocks = nn.ModuleList(
            PostNormBlock(dim, cfg["num_attention_heads"], cfg["intermediate_size"], act=cfg["hidden_act"],
                          eps=cfg["layer_norm_eps"], cross_dim=cross_dim)
            for _ in range(cfg["num_hidden_layers"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                memory: torch.Tensor | None = None, caches: LayerCaches | None = None,
                causal: bool = False) -> torch.Tensor:
        """Hidden states (B, T, dim). `caches`: self-attention caches that grow (decoding) and/or static
        cross-attention caches already holding the image keys/values (then `memory` is only a flag)."""
        past = caches.past_length if caches is not None else 0
        x = self.embed(input_ids, past_length=past)
        mask, is_causal = None, False
        if attention_mask is not None:
            mask = causal_padding_mask(attention_mask, input_ids.shape[1]) if causal else padding_mask(attention_mask)
        elif causal and input_ids.shape[1] > 1:
            if past:
                mask = causal_padding_mask(torch.ones(input_ids.shape[0], past + input_ids.shape[1],
                                                      dtype=torch.long, device=input_ids.device), input_ids.shape[1])
            else:
                is_causal = True
        for i, block in enumerate(self.blocks):
            self_cache = caches.self_attn[i] if caches is not None and causal else None
            cross_cache = caches.cross_attn[i] if caches is not None and caches.cross_attn is not None else None
            x = block(x, mask, memory=memory, is_causal=is_causal, cache=self_cache, cross_cache=cross_cache)
        return x

    def fill_cross_caches(self, memory: torch.Tensor, caches: LayerCaches) -> None:
        """Project the image tokens to each layer's cross-attention keys/values once."""
        for block, cache in zip(self.blocks, caches.cross_attn):
            cache.extend(*block.cross_attn.project_kv(memory))

    def attend_to(self, memory: torch.Tensor, memory_index: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states of texts, row i cross-attending to memory row memory_index[i]. The cross-attention
        keys/values depend only on the memory (an image), so they are projected once per memory row and
        shared by every text paired with it."""
        caches = LayerCaches(len(self.blocks), cross=True)
        self.fill_cross_caches(memory, caches)
        caches.reorder(memory_index)
        return self(input_ids, attention_mask, memory=memory, caches=caches)


class LMHead(nn.Module):
    """BERT's prediction head: dense + act + LayerNorm, then the vocabulary projection."""

    def __init__(self, cfg: dict):
        super().__init__()
        dim = cfg["hidden_size"]
        self.dense = nn.Linear(dim, dim)
        self.act = activation(cfg["hidden_act"])
        self.norm = nn.LayerNorm(dim, eps=cfg["layer_norm_eps"])
        self.proj = nn.Linear(dim, cfg["vocab_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.act(self.dense(x))))


class BlipRetrieval(nn.Module):
    """BlipForImageTextRetrieval. with_itm=False builds only the ITC dual encoder (no cross-attention)."""

    def __init__(self, config: dict, with_itm: bool):
        super().__init__()
        vcfg, tcfg = vision_config(config.get("vision_config")), text_config(config)
        out = config.get("image_text_hidden_size", 256)
        self.vision = blip_vision(vcfg)
        self.text = BlipText(tcfg, cross_dim=vcfg["hidden_size"] if with_itm else None)
        if with_itm:
            self.itm_head = nn.Linear(tcfg["hidden_size"], 2)
        else:
            self.vision_proj = nn.Linear(vcfg["hidden_size"], out)
            self.text_proj = nn.Linear(tcfg["hidden_size"], out)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_proj(self.vision.cls(pixel_values))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.text_proj(self.text(input_ids, attention_mask)[:, 0])

    def match_probability(self, image_tokens: torch.Tensor, image_index: torch.Tensor, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> torch.Tensor:
        """P(match) for text row i against image image_index[i] (each image's keys/values projected once)."""
        hidden = self.text.attend_to(image_tokens, image_index, input_ids, attention_mask)
        return self.itm_head(hidden[:, 0]).float().softmax(dim=-1)[:, 1]


class BlipCaptionModel(nn.Module):
    """BlipForConditionalGeneration: the vision tower and a causal BERT decoder with an LM head."""

    def __init__(self, config: dict):
        super().__init__()
        vcfg, tcfg = vision_config(config.get("vision_config")), text_config(config)
        self.vision = blip_vision(vcfg)
        self.decoder = BlipText(tcfg, cross_dim=vcfg["hidden_size"])
        self.head = LMHead(tcfg)


class BlipVQAModel(nn.Module):
    """BlipForQuestionAnswering: the vision tower; a question encoder (the BERT text tower, cross-attending to
    the image tokens); an answer decoder (causal BERT + LM head) that cross-attends to the question's states."""

    def __init__(self, config: dict):
        super().__init__()
        vcfg, tcfg = vision_config(config.get("vision_config")), text_config(config)
        self.vision = blip_vision(vcfg)
        self.text = BlipText(tcfg, cross_dim=vcfg["hidden_size"])
        self.decoder = BlipText(tcfg, cross_dim=tcfg["hidden_size"])
        self.head = LMHead(tcfg)


class BlipDecodeState:
    """encoders.generate's DecoderState for the BLIP decoder (of a BlipCaptionModel or a BlipVQAModel) over a
    batch of memory rows: image tokens (captions) or question states (answers)."""

    def __init__(self, model: BlipCaptionModel | BlipVQAModel, memory: torch.Tensor):
        self.model = model
        self.memory = memory
        self.caches = LayerCaches(len(model.decoder.blocks), cross=True)
        model.decoder.fill_cross_caches(memory, self.caches)

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model.decoder(input_ids, memory=self.memory, caches=self.caches, causal=True)
        return self.model.head(hidden[:, -1]).float()

    def reorder(self, index: torch.Tensor, same_groups: bool = False) -> None:
        self.caches.reorder(index, same_groups)


def _retrieval_rules(with_itm: bool) -> list[Rule]:
    rules = [*vision_rules("vision", "vision_model"),
             *bert_embedding_rules("text.embed", "text_encoder.embeddings"),
             *bert_layer_rules("text.blocks", "text_encoder.encoder.layer")]
    if with_itm:
        return rules + [Rule(r"itm_head\.(weight|bias)", r"itm_head.\1")]
    return rules + [Rule(r"(vision|text)_proj\.(weight|bias)", r"\1_proj.\2")]


ITC_IGNORED = [r".*position_ids", r"text_encoder\.encoder\.layer\.\d+\.crossattention\..*", r"itm_head\..*",
               r"text_encoder\.pooler\..*"]
ITM_IGNORED = [r".*position_ids", r"(vision|text)_proj\..*", r"text_encoder\.pooler\..*"]


def _caption_rules(tied: bool) -> list[Rule]:
    """The vision tower, the decoder (`text_decoder.bert`) and its LM head: captioning and VQA checkpoints."""
    head = "text_decoder.cls.predictions"
    return [*vision_rules("vision", "vision_model"),
            *bert_embedding_rules("decoder.embed", "text_decoder.bert.embeddings"),
            *bert_layer_rules("decoder.blocks", "text_decoder.bert.encoder.layer"),
            Rule(r"head\.dense\.(weight|bias)", rf"{head}.transform.dense.\1"),
            Rule(r"head\.norm\.(weight|bias)", rf"{head}.transform.LayerNorm.\1"),
            Rule(r"head\.proj\.weight",
                 "text_decoder.bert.embeddings.word_embeddings.weight" if tied else f"{head}.decoder.weight"),
            Rule(r"head\.proj\.bias", f"{head}.bias")]


# the LM head's output weights are tied to the word embeddings (and decoder.bias to predictions.bias); old
# checkpoints store the copies, which are equal
CAPTION_IGNORED = [r".*position_ids", r"text_decoder\.cls\.predictions\.decoder\.(weight|bias)"]


def _vqa_rules(tied: bool) -> list[Rule]:
    return [*_caption_rules(tied),
            *bert_embedding_rules("text.embed", "text_encoder.embeddings"),
            *bert_layer_rules("text.blocks", "text_encoder.encoder.layer")]


VQA_IGNORED = [*CAPTION_IGNORED, r"text_encoder\.pooler\..*"]


KINDS = {  # what each kind of checkpoint is for, as the error messages say it
    "retrieval": "an image-text retrieval model (itm_head); load it with encoders.load or encoders.load_reranker",
    "captioning": "a captioning model (text_decoder, no text_encoder); load it with encoders.load_captioner",
    "vqa": "a question answering model (text_encoder + text_decoder); load it with encoders.load_answerer",
}


def checkpoint_kind(ckpt: Checkpoint) -> str | None:
    """Retrieval, captioning and VQA checkpoints share model_type "blip"; tell them apart by their tensors."""
    names = set(ckpt.tensor_names())
    if "itm_head.weight" in names:
        return "retrieval"
    decoder = any(n.startswith("text_decoder.") for n in names)
    encoder = any(n.startswith("text_encoder.") for n in names)
    if decoder:
        return "vqa" if encoder else "captioning"
    return None


def _check_kind(ckpt: Checkpoint, wanted: str) -> None:
    kind = checkpoint_kind(ckpt)
    if kind == wanted:
        return
    arch = ", ".join(ckpt.config.get("architectures") or []) or "unknown architecture"
    config = ckpt.dir / "config.json"
    if kind is not None:
        raise CheckpointError(f"{config}: this BLIP checkpoint ({arch}) is {KINDS[kind]}")
    raise CheckpointError(f"{config}: BLIP checkpoint ({arch}) has neither an ITM head nor a text decoder; only "
                          f"BlipForImageTextRetrieval, BlipForConditionalGeneration and BlipForQuestionAnswering "
                          f"checkpoints are supported")


def _tokenizer(ckpt: Checkpoint) -> Tokenizer:
    max_positions = text_config(ckpt.config)["max_position_embeddings"]
    tokenizer = load_tokenizer(ckpt.dir, default_max_length=max_positions)
    # transformers would fail past the position table; we truncate there
    tokenizer.max_length = min(tokenizer.max_length, max_positions)
    return tokenizer


@dual_encoder("blip")
def load_blip_dual_encoder(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> DualEncoder:
    _check_kind(ckpt, "retrieval")
    digest = ckpt.digest
    model = load_model(build_on_meta(lambda: BlipRetrieval(ckpt.config, with_itm=False)), ckpt, _retrieval_rules(False),
                       ignore=ITC_IGNORED, dtype=dtype, device=device, family="BLIP")
    return DualEncoder(name=ckpt.name, family="blip", model=model, dim=model.vision_proj.out_features, digest=digest,
                       image_preprocessor=ImagePreprocessor.from_checkpoint_dir(ckpt.dir), tokenizer=_tokenizer(ckpt),
                       device=device, dtype=dtype)


class BlipReranker:
    """BLIP ITM: P(match) of (image, text) pairs. Each distinct image is encoded once per call."""

    def __init__(self, name: str, model: BlipRetrieval, preprocessor: ImagePreprocessor, tokenizer: Tokenizer,
                 device: torch.device, dtype: torch.dtype, digest: str, pair_batch: int = 32, image_batch: int = 32):
        self.name, self.family, self.digest = name, "blip", digest
        self.model, self.image_preprocessor, self.tokenizer = model, preprocessor, tokenizer
        self.device, self.dtype = device, dtype
        self.pair_batch, self.image_batch = pair_batch, image_batch

    def __repr__(self) -> str:
        return f"BlipReranker({self.name!r}, {self.dtype}, {self.device})"

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        """float32 (n,): P(match) of (images[i], texts[i]). The same image object given for several pairs
        (e.g. one query image against many captions) is encoded once."""
        images, texts = list(images), list(texts)
        if len(images) != len(texts):
            raise InvalidInput(f"score() needs as many images as texts (got {len(images)} images, {len(texts)} texts)")
        return self._score(*distinct_images(images), texts)

    def score_texts(self, image: Image.Image, texts: list[str]) -> np.ndarray:
        """P(match) of one image with each text."""
        texts = list(texts)
        return self._score([image], [0] * len(texts), texts)

    def score_images(self, images: list[Image.Image], text: str) -> np.ndarray:
        """P(match) of each image with one text."""
        images = list(images)
        return self._score(images, list(range(len(images))), [text] * len(images))

    def _score(self, images: list[Image.Image], image_index: list[int], texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0,), np.float32)
        out = np.empty(len(texts), np.float32)
        order = sorted(range(len(texts)), key=lambda i: image_index[i])  # pairs of one image share a chunk
        with torch.inference_mode():
            for start in range(0, len(order), self.pair_batch):
                rows = order[start:start + self.pair_batch]
                needed = sorted({image_index[i] for i in rows})
                tokens = torch.cat([self._image_tokens([images[j] for j in needed[k:k + self.image_batch]])
                                    for k in range(0, len(needed), self.image_batch)])
                position = {j: k for k, j in enumerate(needed)}
                index = torch.tensor([position[image_index[i]] for i in rows], device=self.device)
                enc = self.tokenizer([texts[i] for i in rows])
                probs = self.model.match_probability(tokens, index, enc.input_ids.to(self.device),
                                                     enc.attention_mask.to(self.device))
                out[rows] = probs.cpu().numpy()
        return out

    def _image_tokens(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.image_preprocessor(images).to(self.device, self.dtype)
        return self.model.vision(pixels)


@reranker("blip")
def load_blip_reranker(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> BlipReranker:
    _check_kind(ckpt, "retrieval")
    digest = ckpt.digest
    model = load_model(build_on_meta(lambda: BlipRetrieval(ckpt.config, with_itm=True)), ckpt, _retrieval_rules(True),
                       ignore=ITM_IGNORED, dtype=dtype, device=device, family="BLIP")
    return BlipReranker(ckpt.name, model, ImagePreprocessor.from_checkpoint_dir(ckpt.dir), _tokenizer(ckpt),
                        device, dtype, digest)


class BlipGenerator:
    """What BLIP's captioner and answerer share: the decoder's special ids, the checkpoint's generation settings
    and the search over them."""

    def __init__(self, name: str, model: BlipCaptionModel | BlipVQAModel, preprocessor: ImagePreprocessor,
                 tokenizer: Tokenizer,
                 tcfg: dict, device: torch.device, dtype: torch.dtype, digest: str, image_batch: int = 16,
                 length_penalty: float = 1.0, early_stopping: bool | str = False):
        self.name, self.family, self.digest = name, "blip", digest
        self.model, self.image_preprocessor, self.tokenizer = model, preprocessor, tokenizer
        self.bos_id, self.eos_id, self.pad_id = tcfg["bos_token_id"], tcfg["sep_token_id"], tcfg["pad_token_id"]
        self.device, self.dtype = device, dtype
        self.image_batch = image_batch
        self.length_penalty, self.early_stopping = length_penalty, early_stopping

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.dtype}, {self.device})"

    def search(self, state: BlipDecodeState, start_ids: torch.Tensor, max_new_tokens: int,
               num_beams: int) -> list[list[int]]:
        """Greedy or beam search after `start_ids`, stopping at [SEP], with the checkpoint's settings."""
        return generate(state, start_ids, eos_id=self.eos_id, pad_id=self.pad_id, max_new_tokens=max_new_tokens,
                        num_beams=num_beams, length_penalty=self.length_penalty, early_stopping=self.early_stopping)


class BlipCaptioner(BlipGenerator):
    """BLIP captions: greedy or beam search with the prompt handling of transformers'
    BlipForConditionalGeneration.generate ([DEC] replaces [CLS], the prompt's trailing [SEP] is dropped,
    generation stops at [SEP]); the returned text includes the prompt, as the BLIP processor's decode does."""

    model: BlipCaptionModel

    def prompt_ids(self, prompt: str | None) -> list[int]:
        if not prompt:
            return [self.bos_id]
        ids = self.tokenizer.encode(prompt)
        return [self.bos_id] + ids[1:-1]

    def caption(self, images: list[Image.Image], prompt: str | None = None, max_new_tokens: int = 30,
                num_beams: int = 1) -> list[str]:
        images = list(images)
        max_new_tokens, num_beams = check_generation(max_new_tokens, num_beams)
        prompt_row = self.prompt_ids(prompt)
        captions: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.image_batch):
                chunk = images[start:start + self.image_batch]
                pixels = self.image_preprocessor(chunk).to(self.device, self.dtype)
                state = BlipDecodeState(self.model, self.model.vision(pixels))
                prompt_ids = torch.tensor([prompt_row] * len(chunk), device=self.device)
                captions += [self.tokenizer.decode(seq, skip_special_tokens=True)
                             for seq in self.search(state, prompt_ids, max_new_tokens, num_beams)]
        return captions


class BlipAnswerer(BlipGenerator):
    """BLIP VQA, as transformers' BlipForQuestionAnswering.generate: the question ([CLS] q [SEP]) is encoded
    cross-attending to its image; the answer is generated from [DEC], cross-attending to every position of
    the question's states. Like transformers (and the original BLIP), that memory has no padding mask, so the
    padded question batch is part of the input: an answer may change with the longest question among the
    `image_batch` questions it is asked with, exactly as it does in the reference."""

    model: BlipVQAModel

    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 20,
               num_beams: int = 1) -> list[str]:
        """One answer per question about the image beside it (one image may stand for all), as the BLIP
        processor decodes transformers' output."""
        return [self.tokenizer.decode(ids, skip_special_tokens=True)
                for ids in self.answer_ids(images, questions, max_new_tokens, num_beams)]

    def answer_ids(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 20,
                   num_beams: int = 1) -> list[list[int]]:
        """Token ids of each answer: [DEC], the generated ids, [SEP] when the model produced it."""
        images, questions = question_pairs(images, questions)
        max_new_tokens, num_beams = check_generation(max_new_tokens, num_beams)
        out: list[list[int]] = []
        with torch.inference_mode():
            for start in range(0, len(questions), self.image_batch):
                unique, index = distinct_images(images[start:start + self.image_batch])
                image_tokens = self.model.vision(self.image_preprocessor(unique).to(self.device, self.dtype))
                enc = self.tokenizer(questions[start:start + self.image_batch])
                states = self.model.text.attend_to(image_tokens, torch.tensor(index, device=self.device),
                                                   enc.input_ids.to(self.device), enc.attention_mask.to(self.device))
                start_ids = torch.full((len(index), 1), self.bos_id, dtype=torch.long, device=self.device)
                out += self.search(BlipDecodeState(self.model, states), start_ids, max_new_tokens, num_beams)
        return out


def _load_generator(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, kind: str):
    """A BlipCaptioner ("captioning") or BlipAnswerer ("vqa"), with the checkpoint's generation settings."""
    _check_kind(ckpt, kind)
    digest = ckpt.digest
    tcfg = text_config(ckpt.config)
    width = vision_config(ckpt.config.get("vision_config"))["hidden_size"]
    if kind == "vqa" and width != tcfg["hidden_size"]:
        # transformers sizes the decoder's cross-attention for the image width but feeds it the question states
        raise CheckpointError(f"{ckpt.dir / 'config.json'}: a BLIP VQA model needs the vision and text widths to agree "
                              f"(vision hidden_size {width}, text hidden_size {tcfg['hidden_size']}): its answer "
                              f"decoder cross-attends to the question's states")
    tied = bool(ckpt.config.get("tie_word_embeddings", True) and tcfg.get("tie_word_embeddings", True))
    model_cls, rules, ignore, cls = ((BlipCaptionModel, _caption_rules(tied), CAPTION_IGNORED, BlipCaptioner)
                                     if kind == "captioning" else
                                     (BlipVQAModel, _vqa_rules(tied), VQA_IGNORED, BlipAnswerer))
    model = load_model(build_on_meta(lambda: model_cls(ckpt.config)), ckpt, rules, ignore=ignore, dtype=dtype,
                       device=device, family="BLIP")
    generation = ckpt.json_file("generation_config.json") or {}
    return cls(ckpt.name, model, ImagePreprocessor.from_checkpoint_dir(ckpt.dir), _tokenizer(ckpt), tcfg, device,
               dtype, digest, length_penalty=generation.get("length_penalty", 1.0),
               early_stopping=generation.get("early_stopping", False))


@captioner("blip")
def load_blip_captioner(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> BlipCaptioner:
    return _load_generator(ckpt, device, dtype, "captioning")


@answerer("blip")
def load_blip_answerer(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> BlipAnswerer:
    return _load_generator(ckpt, device, dtype, "vqa")
