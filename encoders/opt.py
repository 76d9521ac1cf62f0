"""OPT (facebook/opt-*), the decoder-only language model of BLIP-2 OPT checkpoints.

Pre-LN PreNormBlocks (ReLU MLP), learned positions stored with an offset of 2 (a fairseq legacy: row p + 2
holds position p), causal self-attention with a KV cache, a final LayerNorm and an output head tied to the
token embeddings unless the config says otherwise. The model is fed embeddings, not ids, so BLIP-2 can put
its projected query tokens in front of the prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmsearch.errors import CheckpointError, InvalidInput

from .layers import KVCache, PreNormBlock, causal_padding_mask
from .rules import Rule

POSITION_OFFSET = 2
DEFAULTS = dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                max_position_embeddings=2048, do_layer_norm_before=True, _remove_final_layer_norm=False,
                word_embed_proj_dim=None, activation_function="relu", enable_bias=True,
                layer_norm_elementwise_affine=True, tie_word_embeddings=True, pad_token_id=1, bos_token_id=2,
                eos_token_id=2)


def opt_config(cfg: dict) -> dict:
    cfg = {**DEFAULTS, **cfg}
    if cfg["word_embed_proj_dim"] is None:
        cfg["word_embed_proj_dim"] = cfg["hidden_size"]
    if not cfg["do_layer_norm_before"]:
        raise CheckpointError("OPT with post-layer-norm blocks (do_layer_norm_before=false, i.e. opt-350m) "
                              "is not supported")
    if not cfg["layer_norm_elementwise_affine"]:
        raise CheckpointError("OPT without LayerNorm weights (layer_norm_elementwise_affine=false) is not supported")
    return cfg


class OPTDecoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        cfg = opt_config(cfg)
        dim, word_dim = cfg["hidden_size"], cfg["word_embed_proj_dim"]
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], word_dim)
        self.embed_positions = nn.Embedding(cfg["max_position_embeddings"] + POSITION_OFFSET, dim)
        self.project_in = nn.Linear(word_dim, dim, bias=False) if word_dim != dim else None
        self.blocks = nn.ModuleList(
            PreNormBlock(dim, cfg["num_attention_heads"], cfg["ffn_dim"], act=cfg["activation_function"],
                         bias=cfg["enable_bias"])
            for _ in range(cfg["num_hidden_layers"]))
        self.norm = None if cfg["_remove_final_layer_norm"] else nn.LayerNorm(dim)
        self.project_out = nn.Linear(dim, word_dim, bias=False) if word_dim != dim else None
        self.tied = bool(cfg["tie_word_embeddings"])
        self.lm_head = None if self.tied else nn.Linear(word_dim, cfg["vocab_size"], bias=False)
        self.max_positions = cfg["max_position_embeddings"]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def forward(self, embeds: torch.Tensor, cache: list[KVCache]) -> torch.Tensor:
        """Token embeddings (B, T, word_dim) after the `len(cache[0])` positions already seen ->
        next-token logits of the last position, (B, vocab)."""
        past, steps = len(cache[0]), embeds.shape[1]
        if past + steps > self.max_positions:
            raise InvalidInput(f"the prompt and max_new_tokens together need {past + steps} positions; this OPT "
                               f"model has {self.max_positions}")
        positions = torch.arange(past, past + steps, device=embeds.device) + POSITION_OFFSET
        x = embeds if self.project_in is None else self.project_in(embeds)
        x = x + self.embed_positions(positions)
        mask = None
        if steps > 1 and past > 0:  # a multi-token step on top of a cache needs an explicit causal mask
            mask = causal_padding_mask(torch.ones(x.shape[0], past + steps, device=x.device), steps)
        for block, layer_cache in zip(self.blocks, cache):
            x = block(x, mask, is_causal=steps > 1, cache=layer_cache)
        x = x[:, -1]
        if self.norm is not None:
            x = self.norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return F.linear(x, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(x)


def opt_rules(ours: str, theirs: str) -> list[Rule]:
    """Rules for an OPTDecoder at prefix `ours` stored as an OPTForCausalLM at `theirs` (e.g. "language_model")."""
    o, d = ours.replace(".", r"\.") + r"\.", f"{theirs}.model.decoder"
    return [
        Rule(rf"{o}embed_(tokens|positions)\.weight", rf"{d}.embed_\1.weight"),
        Rule(rf"{o}project_(in|out)\.weight", rf"{d}.project_\1.weight"),
        Rule(rf"{o}blocks\.(\d+)\.norm1\.(weight|bias)", rf"{d}.layers.\1.self_attn_layer_norm.\2"),
        Rule(rf"{o}blocks\.(\d+)\.attn\.(q|k|v|out)_proj\.(weight|bias)", rf"{d}.layers.\1.self_attn.\2_proj.\3"),
        Rule(rf"{o}blocks\.(\d+)\.norm2\.(weight|bias)", rf"{d}.layers.\1.final_layer_norm.\2"),
        Rule(rf"{o}blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", rf"{d}.layers.\1.\2.\3"),
        Rule(rf"{o}norm\.(weight|bias)", rf"{d}.final_layer_norm.\1"),
        Rule(rf"{o}lm_head\.weight", f"{theirs}.lm_head.weight"),
    ]


def opt_ignored(theirs: str, decoder: OPTDecoder) -> list[str]:
    """Checkpoint tensors an OPTDecoder does not read: the tied head's copy of the embeddings."""
    return [rf"{theirs}\.lm_head\.weight"] if decoder.tied else []
