"""SigLIP (google/siglip-*): a ViT with an attention-pooling head and a text transformer pooled at its
last position, trained with a sigmoid loss. Checkpoint names map onto our blocks in RULES below."""

from __future__ import annotations

import torch
from torch import nn

from mmsearch.errors import CheckpointError

from .api import DualEncoder, dual_encoder
from .checkpoint import Checkpoint
from .layers import PreNormBlock, padding_mask
from .preprocess import ImagePreprocessor
from .rules import Rule, build_on_meta, clip_layer_rules, load_model, rows
from .tokenize import load_tokenizer
from .vit import ViTSpec, VisionTransformer


def vision_spec(cfg: dict) -> ViTSpec:
    """SigLIP's ViT: patches (with bias) + positions, no [CLS], final LayerNorm, attention-probe pooling."""
    return ViTSpec.from_config(cfg, patch_bias=True, class_token=False, pool="attention")


class SiglipText(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        dim, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("layer_norm_eps", 1e-6)
        self.token_embed = nn.Embedding(cfg["vocab_size"], dim)
        self.pos_embed = nn.Parameter(torch.zeros(cfg["max_position_embeddings"], dim))
        self.blocks = nn.ModuleList(
            PreNormBlock(dim, heads, cfg["intermediate_size"], act=cfg.get("hidden_act", "gelu_pytorch_tanh"), eps=eps)
            for _ in range(cfg["num_hidden_layers"]))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, cfg.get("projection_size") or dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embed(input_ids) + self.pos_embed[: input_ids.shape[1]]
        mask = None if attention_mask is None else padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask)
        # SigLIP pools the last position (a pad token for short texts), as it was trained
        return self.head(self.norm(x)[:, -1])


class SiglipModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.vision = VisionTransformer(vision_spec(config["vision_config"]))
        self.text = SiglipText(config["text_config"])
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision.pooled(pixel_values)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.text(input_ids, attention_mask)


RULES = [
    Rule(r"vision\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    Rule(r"vision\.pos_embed", "vision_model.embeddings.position_embedding.weight"),
    *clip_layer_rules("vision.blocks", "vision_model.encoder.layers"),
    Rule(r"vision\.norm\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    Rule(r"vision\.head\.probe", "vision_model.head.probe"),
    *(Rule(rf"vision\.head\.attn\.{p}_proj\.{kind}", f"vision_model.head.attention.in_proj_{kind}", rows(i, 3))
      for i, p in enumerate("qkv") for kind in ("weight", "bias")),
    Rule(r"vision\.head\.attn\.out_proj\.(weight|bias)", r"vision_model.head.attention.out_proj.\1"),
    Rule(r"vision\.head\.norm\.(weight|bias)", r"vision_model.head.layernorm.\1"),
    Rule(r"vision\.head\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.head.mlp.\1.\2"),
    Rule(r"text\.token_embed\.weight", "text_model.embeddings.token_embedding.weight"),
    Rule(r"text\.pos_embed", "text_model.embeddings.position_embedding.weight"),
    *clip_layer_rules("text.blocks", "text_model.encoder.layers"),
    Rule(r"text\.norm\.(weight|bias)", r"text_model.final_layer_norm.\1"),
    Rule(r"text\.head\.(weight|bias)", r"text_model.head.\1"),
    Rule(r"logit_(scale|bias)", r"logit_\1"),
]
IGNORED = [r".*position_ids"]


def with_config_defaults(config: dict) -> dict:
    """SigLIP configs may omit keys that equal the transformers defaults; fill them in."""
    vision = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
              "layer_norm_eps": 1e-6, **config.get("vision_config", {})}
    text = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": 64, "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6, **config.get("text_config", {})}
    text.setdefault("projection_size", text["hidden_size"])
    if vision.get("vision_use_head", True) is False:
        raise CheckpointError("this SigLIP vision tower has no pooling head (vision_use_head=false); "
                              "it cannot produce image embeddings")
    return {**config, "vision_config": vision, "text_config": text}


def build_model(config: dict) -> SiglipModel:
    """A randomly initialised SigLIP (for training, e.g. the demo model)."""
    return SiglipModel(with_config_defaults(config))


@dual_encoder("siglip")
def load_siglip(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> DualEncoder:
    config = with_config_defaults(ckpt.config)
    digest = ckpt.digest
    model = build_on_meta(lambda: SiglipModel(config))
    load_model(model, ckpt, RULES, ignore=IGNORED, dtype=dtype, device=device, family="SigLIP")
    text_cfg = config["text_config"]
    tokenizer = load_tokenizer(ckpt.dir, default_max_length=text_cfg["max_position_embeddings"],
                               pad_to_max_length=True)
    tok_cfg = ckpt.json_file("tokenizer_config.json") or {}
    # transformers' SiglipTokenizer returns an attention mask unless the checkpoint says otherwise
    use_mask = "attention_mask" in tok_cfg.get("model_input_names", ["input_ids", "attention_mask"])
    return DualEncoder(name=ckpt.name, family="siglip", model=model, dim=text_cfg["projection_size"], digest=digest,
                       image_preprocessor=ImagePreprocessor.from_checkpoint_dir(ckpt.dir), tokenizer=tokenizer,
                       device=device, dtype=dtype, use_attention_mask=use_mask)
