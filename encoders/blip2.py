"""BLIP-2 (Salesforce/blip2-*): a frozen ViT (the BLIP vision tower, ViT-g sized), a Q-Former, and either
an ITM head (retrieval checkpoints) or a frozen language model (OPT or Flan-T5) for captions.

The Q-Former is a BERT-style stack (PostNormBlocks) over `num_query_tokens` learned query tokens. Every
`cross_attention_frequency`-th layer lets the queries cross-attend to the image tokens. Text, when given
(ITM), is concatenated after the queries and shares self-attention with them, but only the queries
cross-attend, and queries and text have separate feed-forward weights.

- Reranker (`Blip2ForImageTextRetrieval`): queries + text through the Q-Former, the 2-way ITM head on
  every query position, averaged; P(match) = softmax class 1.
- Captioner and Answerer (`Blip2ForConditionalGeneration`): the Q-Former's query outputs, projected to the
  language model's width, are the first input embeddings of OPT (followed by bos + prompt) or of the T5
  encoder (followed by the prompt + </s>); answers are generated after `Question: {q} Answer:`. transformers 5 spells this as `<image>` placeholder tokens replaced by
  those embeddings; the numbers are the same.

As in transformers, the query tokens and the Q-Former stay in float32 when the model runs in bf16/fp16.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from mmsearch.errors import CheckpointError, InvalidInput

from .api import answerer, captioner, check_generation, question_pairs, reranker
from .blip import blip_vision, vision_config, vision_rules
from .checkpoint import Checkpoint
from .generate import LayerCaches, generate
from .layers import MLP, KVCache, PostNormBlock, padding_mask
from .opt import OPTDecoder, opt_ignored, opt_rules
from .preprocess import ImagePreprocessor, distinct_images
from .rules import Rule, build_on_meta, load_model
from .t5 import T5EncoderDecoder, t5_config, t5_ignored, t5_rules
from .tokenize import load_tokenizer

VISION_DEFAULTS = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                       image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6)
QFORMER_DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512,
                        layer_norm_eps=1e-12, cross_attention_frequency=2, use_qformer_text_input=False)
KEEP_FP32 = [r"^query_tokens$", r"^qformer\."]


def blip2_config(config: dict) -> dict:
    vision = vision_config(config.get("vision_config"), **VISION_DEFAULTS)
    qformer = {**QFORMER_DEFAULTS, **(config.get("qformer_config") or {}), "encoder_hidden_size": vision["hidden_size"]}
    return {**config, "vision_config": vision, "qformer_config": qformer,
            "num_query_tokens": config.get("num_query_tokens", 32)}


class QFormerLayer(nn.Module):
    """A PostNormBlock whose cross-attention and feed-forward see only the query positions; text positions
    (ITM) go through their own feed-forward (`text_mlp`)."""

    def __init__(self, cfg: dict, cross: bool, text: bool):
        super().__init__()
        dim, hidden, act, eps = cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_act"], cfg["layer_norm_eps"]
        self.block = PostNormBlock(dim, cfg["num_attention_heads"], hidden, act=act, eps=eps,
                                   cross_dim=cfg["encoder_hidden_size"] if cross else None)
        self.text_mlp = MLP(dim, hidden, act) if text else None
        self.text_mlp_norm = nn.LayerNorm(dim, eps=eps) if text else None

    def forward(self, x: torch.Tensor, num_queries: int, memory_kv: KVCache | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        b = self.block
        x = b.attn_norm(x + b.attn(x, mask=mask))
        queries, text = x[:, :num_queries], x[:, num_queries:]
        if b.cross_attn is not None:
            queries = b.cross_norm(queries + b.cross_attn(queries, cache=memory_kv))
        queries = b.mlp_norm(queries + b.mlp(queries))
        if text.shape[1] == 0:
            return queries
        return torch.cat([queries, self.text_mlp_norm(text + self.text_mlp(text))], dim=1)


class QFormer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        every = cfg["cross_attention_frequency"]
        text = bool(cfg["use_qformer_text_input"])
        self.norm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])
        self.layers = nn.ModuleList(QFormerLayer(cfg, cross=i % every == 0, text=text)
                                    for i in range(cfg["num_hidden_layers"]))

    def image_memory(self, image_tokens: torch.Tensor) -> list[KVCache | None]:
        """Cross-attention keys/values of each layer for these images: computed once per image, then shared
        by every text scored against it (index with `select_memory`)."""
        image_tokens = image_tokens.to(self.norm.weight.dtype)
        out = []
        for layer in self.layers:
            attn = layer.block.cross_attn
            if attn is None:
                out.append(None)
                continue
            cache = KVCache(static=True)
            cache.extend(*attn.project_kv(image_tokens))
            out.append(cache)
        return out

    def forward(self, embeds: torch.Tensor, num_queries: int, memory: list[KVCache | None],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(embeds.to(self.norm.weight.dtype))
        for layer, memory_kv in zip(self.layers, memory):
            x = layer(x, num_queries, memory_kv, mask)
        return x


def select_memory(memory: list[KVCache | None], index: torch.Tensor | None) -> list[KVCache | None]:
    """Rows `index` of per-image cross-attention caches (None: keep as is)."""
    if index is None:
        return memory
    out = []
    for cache in memory:
        if cache is None:
            out.append(None)
            continue
        picked = KVCache(static=True)
        picked.extend(cache.k.index_select(0, index), cache.v.index_select(0, index))
        out.append(picked)
    return out


class Blip2Base(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.vision = blip_vision(config["vision_config"])
        q = config["qformer_config"]
        self.query_tokens = nn.Parameter(torch.zeros(1, config["num_query_tokens"], q["hidden_size"]))
        self.qformer = QFormer(q)

    def image_memory(self, pixels: torch.Tensor) -> list[KVCache | None]:
        return self.qformer.image_memory(self.vision(pixels))

    def queries(self, batch: int) -> torch.Tensor:
        return self.query_tokens.expand(batch, -1, -1)


class Blip2ITM(Blip2Base):
    def __init__(self, config: dict):
        super().__init__(config)
        q = config["qformer_config"]
        self.word_embed = nn.Embedding(q["vocab_size"], q["hidden_size"])
        self.pos_embed = nn.Embedding(q["max_position_embeddings"], q["hidden_size"])
        self.itm_head = nn.Linear(q["hidden_size"], 2)

    def match_probability(self, memory: list[KVCache | None], input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> torch.Tensor:
        """P(match) for each (image memory row, text row) pair: (B,) float32."""
        batch, length = input_ids.shape
        text = self.word_embed(input_ids) + self.pos_embed(torch.arange(length, device=input_ids.device))
        queries = self.queries(batch)
        embeds = torch.cat([queries.to(text.dtype), text], dim=1)
        ones = torch.ones(batch, queries.shape[1], dtype=attention_mask.dtype, device=attention_mask.device)
        mask = padding_mask(torch.cat([ones, attention_mask], dim=1))
        hidden = self.qformer(embeds, queries.shape[1], memory, mask)[:, :queries.shape[1]]
        logits = self.itm_head(hidden.to(self.itm_head.weight.dtype)).mean(dim=1)
        return logits.float().softmax(dim=-1)[:, 1]


def qformer_rules(theirs: str = "qformer") -> list[Rule]:
    layer = f"{theirs}.encoder.layer"
    b = r"qformer\.layers\.(\d+)\.block"
    rules = [Rule(r"qformer\.norm\.(weight|bias)", rf"{theirs}.layernorm.\1")]
    for ours, kind in ((rf"{b}\.attn", "attention"), (rf"{b}\.cross_attn", "crossattention")):
        rules += [
            *(Rule(rf"{ours}\.{p}_proj\.(weight|bias)", rf"{layer}.\1.{kind}.attention.{name}.\2")
              for p, name in (("q", "query"), ("k", "key"), ("v", "value"))),
            Rule(rf"{ours}\.out_proj\.(weight|bias)", rf"{layer}.\1.{kind}.output.dense.\2"),
        ]
    rules += [
        Rule(rf"{b}\.attn_norm\.(weight|bias)", rf"{layer}.\1.attention.output.LayerNorm.\2"),
        Rule(rf"{b}\.cross_norm\.(weight|bias)", rf"{layer}.\1.crossattention.output.LayerNorm.\2"),
        Rule(rf"{b}\.mlp\.fc1\.(weight|bias)", rf"{layer}.\1.intermediate_query.dense.\2"),
        Rule(rf"{b}\.mlp\.fc2\.(weight|bias)", rf"{layer}.\1.output_query.dense.\2"),
        Rule(rf"{b}\.mlp_norm\.(weight|bias)", rf"{layer}.\1.output_query.LayerNorm.\2"),
        Rule(r"qformer\.layers\.(\d+)\.text_mlp\.fc1\.(weight|bias)", rf"{layer}.\1.intermediate.dense.\2"),
        Rule(r"qformer\.layers\.(\d+)\.text_mlp\.fc2\.(weight|bias)", rf"{layer}.\1.output.dense.\2"),
        Rule(r"qformer\.layers\.(\d+)\.text_mlp_norm\.(weight|bias)", rf"{layer}.\1.output.LayerNorm.\2"),
    ]
    return rules


def base_rules(ckpt: Checkpoint) -> list[Rule]:
    # hub snapshots keep the ViT's q/v biases as separate tensors; transformers 5 saves them fused
    names = set(ckpt.tensor_names())
    qkv_bias = "qv" if "vision_model.encoder.layers.0.self_attn.q_bias" in names else "fused"
    return [*vision_rules("vision", "vision_model", qkv_bias=qkv_bias), Rule(r"query_tokens", "query_tokens"),
            *qformer_rules()]


# Text feed-forward weights of a Q-Former used without text (older saves keep them), position_ids buffers.
BASE_IGNORED = [r".*position_ids"]
UNUSED_TEXT_FF = r"qformer\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)"


def _fp32_parts(dtype: torch.dtype) -> list[str]:
    return KEEP_FP32 if dtype != torch.float32 else []


class Blip2Reranker:
    """rr.score(images, texts) -> float32 (n,) P(match) of pair i. A single image is scored against every
    text; the image side (ViT + cross-attention keys/values) is computed once per distinct image."""

    def __init__(self, *, name: str, model: Blip2ITM, image_preprocessor: ImagePreprocessor, tokenizer,
                 device: torch.device, dtype: torch.dtype, digest: str, batch_size: int = 32):
        self.name, self.family, self.digest = name, "blip2", digest
        self.model, self.image_preprocessor, self.tokenizer = model, image_preprocessor, tokenizer
        self.device, self.dtype, self.batch_size = device, dtype, batch_size

    def __repr__(self) -> str:
        return f"Blip2Reranker({self.name!r}, {self.dtype}, {self.device})"

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        images, texts = list(images), list(texts)
        if len(images) == 1 and len(texts) > 1:
            images = images * len(texts)
        if len(images) != len(texts):
            raise InvalidInput(f"score needs one image per text (or a single image): got {len(images)} images "
                               f"and {len(texts)} texts")
        out = np.zeros(len(texts), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                stop = start + self.batch_size
                unique, index = distinct_images(images[start:stop])
                pixels = self.image_preprocessor(unique).to(self.device, self.dtype)
                memory = self.model.image_memory(pixels)
                rows = None if len(unique) == len(index) else torch.tensor(index, device=self.device)
                enc = self.tokenizer(texts[start:stop])
                probs = self.model.match_probability(select_memory(memory, rows), enc.input_ids.to(self.device),
                                                     enc.attention_mask.to(self.device))
                out[start:stop] = probs.cpu().numpy()
        return out


@reranker("blip-2")
def load_blip2_reranker(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> Blip2Reranker:
    config = blip2_config(ckpt.config)
    q = config["qformer_config"]
    if not q["use_qformer_text_input"]:
        raise CheckpointError(f"{ckpt.dir / 'config.json'}: this BLIP-2 checkpoint has no Q-Former text input "
                              "(qformer_config.use_qformer_text_input is false), so it cannot score image-text pairs; "
                              "use an ITM checkpoint such as Salesforce/blip2-itm-vit-g")
    digest = ckpt.digest
    model = build_on_meta(lambda: Blip2ITM(config))
    rules = [*base_rules(ckpt),
             Rule(r"word_embed\.weight", "embeddings.word_embeddings.weight"),
             Rule(r"pos_embed\.weight", "embeddings.position_embeddings.weight"),
             Rule(r"itm_head\.(weight|bias)", r"itm_head.\1")]
    # the ITC projections belong to the contrastive (first-stage) use of the checkpoint
    ignore = [*BASE_IGNORED, r"(vision|text)_projection\.(weight|bias)", r"temp"]
    load_model(model, ckpt, rules, ignore=ignore, dtype=dtype, device=device, family="BLIP-2",
               keep_fp32=_fp32_parts(dtype))
    tokenizer = load_tokenizer(ckpt.dir, default_max_length=q["max_position_embeddings"])
    tokenizer.max_length = min(tokenizer.max_length, q["max_position_embeddings"])  # text positions are finite
    return Blip2Reranker(name=ckpt.name, model=model, image_preprocessor=ImagePreprocessor.from_checkpoint_dir(ckpt.dir),
                         tokenizer=tokenizer, device=device, dtype=dtype, digest=digest)


# ---------------------------------------------------------------------------------------------------
# Captioning


class Blip2Captioning(Blip2Base):
    def __init__(self, config: dict, lm_type: str, untied_t5_head: bool):
        super().__init__(config)
        text = config["text_config"]
        self.lm_type = lm_type
        if lm_type == "opt":
            self.lm = OPTDecoder(text)
            lm_dim = text.get("word_embed_proj_dim") or text.get("hidden_size", 768)
        else:
            self.lm = T5EncoderDecoder(text, untied_head=untied_t5_head)
            lm_dim = t5_config(text)["d_model"]
        self.language_projection = nn.Linear(config["qformer_config"]["hidden_size"], lm_dim)

    def image_prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images -> the language model's leading input embeddings (B, num_query_tokens, lm_dim)."""
        memory = self.image_memory(pixels)
        queries = self.qformer(self.queries(pixels.shape[0]), self.query_tokens.shape[1], memory)
        return self.language_projection(queries.to(self.language_projection.weight.dtype))


class OPTState:
    """generate() DecoderState for OPT: the first step feeds [image prefix; prompt ids], later steps one token."""

    def __init__(self, lm: OPTDecoder, prefix: torch.Tensor):
        self.lm, self.prefix = lm, prefix
        self.caches = LayerCaches(len(lm.blocks))

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.lm.embed(input_ids)
        if self.prefix is not None:
            embeds = torch.cat([self.prefix.to(embeds.dtype), embeds], dim=1)
            self.prefix = None
        return self.lm(embeds, self.caches.self_attn)

    def reorder(self, index: torch.Tensor, same_groups: bool = False) -> None:
        self.caches.reorder(index, same_groups)


class T5State:
    """generate() DecoderState for T5: the encoder output is the fixed memory of every decoder step."""

    def __init__(self, lm: T5EncoderDecoder, memory: torch.Tensor, memory_mask: torch.Tensor | None):
        self.lm, self.memory, self.memory_mask = lm, memory, memory_mask
        self.caches = LayerCaches(len(lm.decoder.layers), cross=True)

    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.decode(input_ids, self.memory, self.memory_mask, (self.caches.self_attn, self.caches.cross_attn))

    def reorder(self, index: torch.Tensor, same_groups: bool = False) -> None:
        self.caches.reorder(index, same_groups)
        if not same_groups:
            self.memory = self.memory.index_select(0, index)
            if self.memory_mask is not None:
                self.memory_mask = self.memory_mask.index_select(0, index)


QUESTION_PROMPT = "Question: {} Answer:"  # the BLIP-2 model cards' VQA prompt


class Blip2Captioner:
    """Captions and prompted answers from a BLIP-2 language model:
    cap.caption(images, prompt=None, max_new_tokens=30, num_beams=1) -> list[str], one per image;
    cap.answer(images, questions, max_new_tokens=20, num_beams=1) -> list[str], one per question."""

    def __init__(self, *, name: str, model: Blip2Captioning, image_preprocessor: ImagePreprocessor, tokenizer,
                 device: torch.device, dtype: torch.dtype, digest: str, bos_id: int | None, eos_id: int,
                 pad_id: int | None, skip_ids: set[int], batch_size: int = 8):
        self.name, self.family, self.digest = name, "blip2", digest
        self.model, self.image_preprocessor, self.tokenizer = model, image_preprocessor, tokenizer
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.bos_id, self.eos_id, self.pad_id, self.skip_ids = bos_id, eos_id, pad_id, skip_ids
        self.question_prompt = QUESTION_PROMPT

    def __repr__(self) -> str:
        return f"Blip2Captioner({self.name!r}, {self.model.lm_type}, {self.dtype}, {self.device})"

    def prompt_ids(self, prompt: str | None) -> list[int]:
        """The language-model tokens after the image prefix, as Blip2Processor + generate() make them."""
        if prompt:
            return self.tokenizer.encode(prompt)
        if self.model.lm_type == "opt":
            return [self.bos_id]
        # T5 without a prompt: the encoder sees the image prefix and the tokenizer's empty text ("</s>")
        return self.tokenizer.encode("")

    def caption(self, images: list[Image.Image], prompt: str | None = None, max_new_tokens: int = 30,
                num_beams: int = 1) -> list[str]:
        """One caption per image, decoded the way Blip2Processor.batch_decode decodes transformers' generate():
        for OPT (decoder-only) that text starts with the prompt, for T5 it is the decoder output only."""
        return [self.decode(ids) for ids in self.generate_ids(images, prompt, max_new_tokens, num_beams)]

    def generate_ids(self, images: list[Image.Image], prompt: str | None = None, max_new_tokens: int = 30,
                     num_beams: int = 1) -> list[list[int]]:
        """Token ids per image: OPT - prompt ids then generated ids; T5 - decoder start then generated ids."""
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidInput(f"prompt must be a string, got {type(prompt).__name__}")
        max_new_tokens, num_beams = check_generation(max_new_tokens, num_beams)
        images = list(images)
        return self._generate(images, [self.prompt_ids(prompt)] * len(images), max_new_tokens, num_beams)

    def answer(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 20,
               num_beams: int = 1) -> list[str]:
        """One answer per question: the text generated after `Question: {q} Answer:` (the model cards' prompt),
        without the prompt and stripped."""
        images, questions = question_pairs(images, questions)
        rows = self.answer_ids(images, questions, max_new_tokens, num_beams)
        return [self.decode(ids).strip() for ids in rows]

    def answer_ids(self, images: list[Image.Image], questions: list[str], max_new_tokens: int = 20,
                   num_beams: int = 1) -> list[list[int]]:
        """The generated ids of each answer (OPT: after the prompt; T5: after the decoder start)."""
        images, questions = question_pairs(images, questions)
        max_new_tokens, num_beams = check_generation(max_new_tokens, num_beams)
        prompts = [self.prompt_ids(self.question_prompt.format(q)) for q in questions]
        sequences = self._generate(images, prompts, max_new_tokens, num_beams)
        skip = [len(p) for p in prompts] if self.model.lm_type == "opt" else [1] * len(prompts)
        return [seq[n:] for seq, n in zip(sequences, skip)]

    def _generate(self, images: list[Image.Image], prompts: list[list[int]], max_new_tokens: int,
                  num_beams: int) -> list[list[int]]:
        """Generate for each image after its own prompt ids. OPT runs the prompts of each length together,
        unpadded, which gives each row the numbers it gets alone (and transformers gives a left-padded batch);
        T5's encoder takes the prompts right-padded with their mask, as Blip2Processor pads them."""
        out: list[list[int]] = [[] for _ in images]
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                unique, index = distinct_images(images[start:start + self.batch_size])
                pixels = self.image_preprocessor(unique).to(self.device, self.dtype)
                prefix = self.model.image_prefix(pixels).index_select(0, torch.tensor(index, device=self.device))
                rows = prompts[start:start + len(index)]
                if self.model.lm_type == "opt":
                    by_length: dict[int, list[int]] = {}
                    for i, row in enumerate(rows):
                        by_length.setdefault(len(row), []).append(i)
                    for members in by_length.values():
                        picked = torch.tensor(members, device=self.device)
                        ids = torch.tensor([rows[i] for i in members], dtype=torch.long, device=self.device)
                        state = OPTState(self.model.lm, prefix.index_select(0, picked))
                        for i, seq in zip(members, self._search(state, ids, max_new_tokens, num_beams)):
                            out[start + i] = seq
                else:
                    lm = self.model.lm
                    enc = self.tokenizer.pad(rows)
                    ids, mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)
                    queries = torch.ones(mask.shape[0], prefix.shape[1], dtype=mask.dtype, device=self.device)
                    memory, memory_mask = lm.encode(torch.cat([prefix.to(lm.shared.weight.dtype), lm.embed(ids)], dim=1),
                                                    torch.cat([queries, mask], dim=1))
                    start_ids = torch.full((len(rows), 1), lm.decoder_start_token_id, dtype=torch.long,
                                           device=self.device)
                    sequences = self._search(T5State(lm, memory, memory_mask), start_ids, max_new_tokens, num_beams)
                    out[start:start + len(rows)] = sequences
        return out

    def _search(self, state, start_ids: torch.Tensor, max_new_tokens: int, num_beams: int) -> list[list[int]]:
        return generate(state, start_ids, eos_id=self.eos_id, max_new_tokens=max_new_tokens, num_beams=num_beams,
                        pad_id=self.pad_id)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.skip_ids])


@captioner("blip-2")
@answerer("blip-2")
def load_blip2_captioner(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> Blip2Captioner:
    config = blip2_config(ckpt.config)
    text = config.get("text_config") or {"model_type": "opt"}
    lm_type = text.get("model_type", "opt")
    if lm_type not in ("opt", "t5"):
        raise CheckpointError(f"{ckpt.dir / 'config.json'}: BLIP-2 with a {lm_type!r} language model is not supported "
                              "(supported: opt, t5)")
    if "itm_head.weight" in set(ckpt.tensor_names()):
        raise CheckpointError(f"{ckpt.dir / 'config.json'}: this is a BLIP-2 image-text matching checkpoint; "
                              "load it with load_reranker (it has no language model to caption or answer with)")
    config = {**config, "text_config": text}
    untied_t5_head = lm_type == "t5" and "language_model.lm_head.weight" in set(ckpt.tensor_names())
    digest = ckpt.digest
    model = build_on_meta(lambda: Blip2Captioning(config, lm_type, untied_t5_head))
    rules = [*base_rules(ckpt), Rule(r"language_projection\.(weight|bias)", r"language_projection.\1")]
    ignore = [*BASE_IGNORED, UNUSED_TEXT_FF]
    if lm_type == "opt":
        rules += opt_rules("lm", "language_model")
        ignore += opt_ignored("language_model", model.lm)
    else:
        rules += t5_rules("lm", "language_model", gated=t5_config(text)["feed_forward_proj"].startswith("gated-"))
        ignore += t5_ignored("language_model")
    keep = _fp32_parts(dtype)
    if dtype == torch.float16 and lm_type == "t5":
        keep = keep + [r"^lm\.(encoder|decoder)\.layers\.\d+\.mlp\.fc2\."]  # T5's output projection overflows fp16
    load_model(model, ckpt, rules, ignore=ignore, dtype=dtype, device=device, family="BLIP-2", keep_fp32=keep)

    if lm_type == "opt":
        positions = model.lm.max_positions
        bos_id, eos_id, pad_id = text.get("bos_token_id", 2), text.get("eos_token_id", 2), text.get("pad_token_id", 1)
    else:
        positions = 512
        bos_id, eos_id, pad_id = None, model.lm.eos_token_id, model.lm.pad_token_id
    tokenizer = load_tokenizer(ckpt.dir, default_max_length=positions - config["num_query_tokens"])
    skip = set(tokenizer.special_ids)
    if config.get("image_token_index") is not None:
        skip.add(int(config["image_token_index"]))
    return Blip2Captioner(name=ckpt.name, model=model, image_preprocessor=ImagePreprocessor.from_checkpoint_dir(ckpt.dir),
                          tokenizer=tokenizer, device=device, dtype=dtype, digest=digest, bos_id=bos_id,
                          eos_id=eos_id, pad_id=pad_id, skip_ids=skip)
