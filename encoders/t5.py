"""T5 / Flan-T5 encoder-decoder, the language model of BLIP-2 Flan-T5 checkpoints.

Pre-norm layers with T5's scale-only RMSNorm and no biases; attention is unscaled (the 1/sqrt(d) is folded
into the trained weights) and positions enter only as a learned per-head bias over bucketed relative
distances, computed by the first layer of each stack (bidirectional buckets in the encoder, past-only in
the decoder) and shared by the others. Feed-forward: ReLU `DenseReluDense` (T5) or gated GELU (T5 v1.1 /
Flan-T5). The output head is the checkpoint's `lm_head` when it has one (Flan-T5), else the shared
embedding; original T5 configs (tie_word_embeddings) also rescale the decoder output by d_model**-0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP, Attention, GatedMLP, KVCache, RelativePositionBias, RMSNorm, padding_mask
from .rules import Rule

DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=None,
                num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                layer_norm_epsilon=1e-6, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1)


def t5_config(cfg: dict) -> dict:
    cfg = {**DEFAULTS, **cfg}
    if cfg["num_decoder_layers"] is None:
        cfg["num_decoder_layers"] = cfg["num_layers"]
    if cfg.get("decoder_start_token_id") is None:
        cfg["decoder_start_token_id"] = cfg["pad_token_id"]
    # transformers 5 writes `scale_decoder_outputs`; older configs say it through tie_word_embeddings
    if "scale_decoder_outputs" not in cfg:
        cfg["scale_decoder_outputs"] = cfg.get("tie_word_embeddings") is not False
    return cfg


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """T5 activations can overflow float16; clamp like the reference so inf does not spread."""
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max
    limit = torch.where(torch.isinf(x).any(), limit - 1000, limit)
    return torch.clamp(x, min=-limit, max=limit)


class T5Layer(nn.Module):
    """x + self_attn(norm(x)) [+ cross_attn(norm(x), memory)] + ff(norm(x))."""

    def __init__(self, cfg: dict, cross: bool):
        super().__init__()
        dim, heads, eps = cfg["d_model"], cfg["num_heads"], cfg["layer_norm_epsilon"]

        def attention():
            return Attention(dim, heads, bias=False, scale=1.0, head_dim=cfg["d_kv"])

        self.attn_norm = RMSNorm(dim, eps)
        self.attn = attention()
        self.cross_norm = RMSNorm(dim, eps) if cross else None
        self.cross_attn = attention() if cross else None
        self.mlp_norm = RMSNorm(dim, eps)
        act = cfg["feed_forward_proj"].split("-")[-1]
        if cfg["feed_forward_proj"].startswith("gated-"):
            self.mlp = GatedMLP(dim, cfg["d_ff"], "gelu_new" if act == "gelu" else act)
        else:
            self.mlp = MLP(dim, cfg["d_ff"], act, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, *, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                cross_cache: KVCache | None = None) -> torch.Tensor:
        x = _clamp_fp16(x + self.attn(self.attn_norm(x), mask=bias, cache=cache))
        if self.cross_attn is not None:
            x = _clamp_fp16(x + self.cross_attn(self.cross_norm(x), memory, mask=memory_mask, cache=cross_cache))
        return _clamp_fp16(x + self.mlp(self.mlp_norm(x)).to(x.dtype))


class T5Stack(nn.Module):
    def __init__(self, cfg: dict, decoder: bool):
        super().__init__()
        count = cfg["num_decoder_layers"] if decoder else cfg["num_layers"]
        self.rel_bias = RelativePositionBias(cfg["relative_attention_num_buckets"],
                                             cfg["relative_attention_max_distance"], cfg["num_heads"],
                                             bidirectional=not decoder)
        self.layers = nn.ModuleList(T5Layer(cfg, cross=decoder) for _ in range(count))
        self.norm = RMSNorm(cfg["d_model"], cfg["layer_norm_epsilon"])


class T5EncoderDecoder(nn.Module):
    def __init__(self, cfg: dict, untied_head: bool):
        super().__init__()
        cfg = t5_config(cfg)
        self.shared = nn.Embedding(cfg["vocab_size"], cfg["d_model"])
        self.encoder = T5Stack(cfg, decoder=False)
        self.decoder = T5Stack(cfg, decoder=True)
        self.lm_head = nn.Linear(cfg["d_model"], cfg["vocab_size"], bias=False) if untied_head else None
        self.output_scale = cfg["d_model"] ** -0.5 if cfg["scale_decoder_outputs"] else None
        self.decoder_start_token_id = cfg["decoder_start_token_id"]
        self.eos_token_id = cfg["eos_token_id"]
        self.pad_token_id = cfg["pad_token_id"]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.shared(input_ids)

    def encode(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder over embeddings (B, S, D) -> (memory, additive memory mask or None)."""
        length = embeds.shape[1]
        bias = self.encoder.rel_bias(length, length).to(embeds.dtype)
        memory_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            memory_mask = padding_mask(attention_mask, embeds.dtype)
            bias = bias + memory_mask
        x = embeds
        for layer in self.encoder.layers:
            x = layer(x, bias)
        return self.encoder.norm(x), memory_mask

    def new_cache(self) -> tuple[list[KVCache], list[KVCache]]:
        n = len(self.decoder.layers)
        return [KVCache() for _ in range(n)], [KVCache(static=True) for _ in range(n)]

    def decode(self, input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
               cache: tuple[list[KVCache], list[KVCache]]) -> torch.Tensor:
        """Decoder ids (B, T) after the `len(cache)` positions already decoded -> next-token logits (B, vocab)."""
        self_caches, cross_caches = cache
        past, steps = len(self_caches[0]), input_ids.shape[1]
        x = self.shared(input_ids)
        bias = self.decoder.rel_bias(steps, past + steps, query_offset=past).to(x.dtype)
        if steps > 1:
            q = torch.arange(steps, device=x.device)[:, None] + past
            future = torch.arange(past + steps, device=x.device)[None, :] > q
            bias = bias.masked_fill(future, torch.finfo(x.dtype).min)
        for layer, self_cache, cross_cache in zip(self.decoder.layers, self_caches, cross_caches):
            x = layer(x, bias, memory=memory, memory_mask=memory_mask, cache=self_cache, cross_cache=cross_cache)
        x = self.decoder.norm(x[:, -1])
        if self.output_scale is not None:
            x = x * self.output_scale
        return F.linear(x, self.shared.weight) if self.lm_head is None else self.lm_head(x)


def t5_rules(ours: str, theirs: str, gated: bool) -> list[Rule]:
    """Rules for a T5EncoderDecoder at prefix `ours` stored as a T5ForConditionalGeneration at `theirs`
    (gated: T5 v1.1 names its two input projections wi_0 / wi_1, plain T5 its single one wi)."""
    o, t = ours.replace(".", r"\.") + r"\.", theirs
    wi = "wi_0" if gated else "wi"
    rules = [
        Rule(rf"{o}shared\.weight", f"{t}.shared.weight"),
        Rule(rf"{o}lm_head\.weight", f"{t}.lm_head.weight"),
    ]
    for stack, cross_index, ff_index in (("encoder", None, 1), ("decoder", 1, 2)):
        s = f"{t}.{stack}"
        rules += [
            Rule(rf"{o}{stack}\.rel_bias\.embed\.weight", f"{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            Rule(rf"{o}{stack}\.norm\.weight", f"{s}.final_layer_norm.weight"),
            Rule(rf"{o}{stack}\.layers\.(\d+)\.attn_norm\.weight", rf"{s}.block.\1.layer.0.layer_norm.weight"),
            Rule(rf"{o}{stack}\.layers\.(\d+)\.attn\.(q|k|v)_proj\.weight", rf"{s}.block.\1.layer.0.SelfAttention.\2.weight"),
            Rule(rf"{o}{stack}\.layers\.(\d+)\.attn\.out_proj\.weight", rf"{s}.block.\1.layer.0.SelfAttention.o.weight"),
            Rule(rf"{o}{stack}\.layers\.(\d+)\.mlp_norm\.weight", rf"{s}.block.\1.layer.{ff_index}.layer_norm.weight"),
            Rule(rf"{o}{stack}\.layers\.(\d+)\.mlp\.(?:gate|fc1)\.weight",
                 rf"{s}.block.\1.layer.{ff_index}.DenseReluDense.{wi}.weight"),
            Rule(rf"{o}{stack}\.layers\.(\d+)\.mlp\.up\.weight", rf"{s}.block.\1.layer.{ff_index}.DenseReluDense.wi_1.weight"),
            Rule(rf"{o}{stack}\.layers\.(\d+)\.mlp\.fc2\.weight", rf"{s}.block.\1.layer.{ff_index}.DenseReluDense.wo.weight"),
        ]
        if cross_index is not None:
            rules += [
                Rule(rf"{o}{stack}\.layers\.(\d+)\.cross_norm\.weight", rf"{s}.block.\1.layer.{cross_index}.layer_norm.weight"),
                Rule(rf"{o}{stack}\.layers\.(\d+)\.cross_attn\.(q|k|v)_proj\.weight",
                     rf"{s}.block.\1.layer.{cross_index}.EncDecAttention.\2.weight"),
                Rule(rf"{o}{stack}\.layers\.(\d+)\.cross_attn\.out_proj\.weight",
                     rf"{s}.block.\1.layer.{cross_index}.EncDecAttention.o.weight"),
            ]
    return rules


def t5_ignored(theirs: str) -> list[str]:
    """Tensors a T5EncoderDecoder does not read: the stacks' copies of the shared embedding (old .bin files
    store them) and the unused relative bias of the first cross-attention."""
    t = theirs.replace(".", r"\.")
    return [rf"{t}\.(encoder|decoder)\.embed_tokens\.weight",
            rf"{t}\.decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight"]
