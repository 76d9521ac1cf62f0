"""BLIP (Salesforce/blip-*): a ViT image tower and a BERT text tower that can cross-attend to the image.

One file, three uses of the same checkpoint family:
- retrieval checkpoints (`BlipForImageTextRetrieval`) load as a DualEncoder (ITC: projections of the image
  [CLS] and the text's first token) and as a Reranker (ITM: the text tower cross-attends to the image,
  a 2-way head gives P(match));
- captioning checkpoints (`BlipForConditionalGeneration`) load as a Captioner (a causal BERT decoder with
  cross-attention, greedy or beam search through encoders.generate).

The vision tower (`BlipVision` + `vision_rules`) is shared with BLIP-2, whose ViT has the same layout.
"""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import Rule, rows
from .layers import PatchEmbed, PreNormBlock


VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=384, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-5, num_channels=3)


def vision_config(cfg: dict | None, **defaults) -> dict:
    """A vision_config with the transformers class defaults filled in (hub configs omit default values);
    `defaults` override VISION_DEFAULTS (BLIP-2 passes its own)."""
    return {**VISION_DEFAULTS, **defaults, **(cfg or {})}


class BlipVision(nn.Module):
    """ViT: [CLS] + patch tokens + learned positions, pre-norm blocks, final LayerNorm.
    forward returns every token after the final norm, (B, 1 + patches, dim); token 0 is the image [CLS]."""

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = vision_config(cfg)
        dim, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        eps, act = cfg["layer_norm_eps"], cfg["hidden_act"]
        patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
        self.dim = dim
        self.patch_embed = PatchEmbed(cfg["num_channels"], dim, cfg["patch_size"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.blocks = nn.ModuleList(PreNormBlock(dim, heads, cfg["intermediate_size"], act=act, eps=eps)
                                    for _ in range(cfg["num_hidden_layers"]))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixels)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def vision_rules(ours: str, theirs: str, qkv_bias: str = "fused") -> list[Rule]:
    """Checkpoint rules for a BlipVision at prefix `ours` stored at `theirs` (e.g. "vision_model").

    The checkpoint keeps q/k/v as one `self_attn.qkv` matrix (split here into our q/k/v rows) and the output
    projection as `self_attn.projection`. qkv_bias says where the q/k/v biases are:
      "fused" - `self_attn.qkv.bias` (BLIP, and BLIP-2 saved by transformers >= 5);
      "qv"    - `self_attn.q_bias` + `self_attn.v_bias`, key bias zero (BLIP-2 as on the hub)."""
    o, t = (ours.replace(".", r"\.") + r"\.") if ours else "", theirs
    layers = f"{t}.encoder.layers"
    rules = [
        Rule(rf"{o}patch_embed\.proj\.(weight|bias)", rf"{t}.embeddings.patch_embedding.\1"),
        Rule(rf"{o}cls_token", f"{t}.embeddings.class_embedding"),
        Rule(rf"{o}pos_embed", f"{t}.embeddings.position_embedding"),
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

