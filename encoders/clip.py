"""CLIP (openai/clip-vit-*, laion/CLIP-ViT-*): a ViT image tower pooled at [CLS] and a causal text transformer
pooled at the end-of-text token, each followed by a bias-free projection into the shared space.

The pieces are shared: the CLIP vision tower (`vision_spec` + `vision_rules`) is also AltCLIP's image tower,
and the text transformer (`ClipText` + `text_rules`) is also GroupViT's text tower. `tower_configs` fills a
two-tower config.json the way transformers does for all three families, including the old
`text_config_dict` / `vision_config_dict` keys.
"""

from __future__ import annotations

import torch
from torch import nn

from mmsearch.errors import InvalidInput

from .api import DualEncoder, dual_encoder
from .checkpoint import Checkpoint
from .layers import PreNormBlock
from .preprocess import ImagePreprocessor
from .rules import Rule, build_on_meta, clip_layer_rules, load_model
from .tokenize import load_tokenizer
from .vit import ViTSpec, VisionTransformer

# transformers' CLIPVisionConfig / CLIPTextConfig defaults (openai/clip-vit-base-patch32)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                       layer_norm_eps=1e-5)
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                     pad_token_id=1, bos_token_id=49406, eos_token_id=49407)


def tower_configs(config: dict, text_defaults: dict, vision_defaults: dict) -> tuple[dict, dict]:
    """(text_config, vision_config) with the class defaults filled in. Old snapshots keep the towers in
    `text_config_dict` / `vision_config_dict`; as in transformers, those are completed with the defaults and
    then win over every key of `text_config` / `vision_config`."""
    towers = []
    for key, defaults in (("text", text_defaults), ("vision", vision_defaults)):
        given, legacy = config.get(f"{key}_config") or {}, config.get(f"{key}_config_dict")
        towers.append({**given, **defaults, **legacy} if legacy is not None else {**defaults, **given})
    return towers[0], towers[1]


def vision_spec(cfg: dict) -> ViTSpec:
    """CLIP's ViT: bias-free patches, [CLS] + positions, pre-LN, blocks, post-LN on the [CLS] token."""
    return ViTSpec.from_config(cfg, patch_bias=False, class_token=True, pre_norm=True, pool="cls")


def vision_rules(ours: str, theirs: str, layers: str | None = None) -> list[Rule]:
    """Rules for a CLIP vision tower at prefix `ours` stored at `theirs` (e.g. "vision_model"); `layers` is the
    layer stack's prefix when it is not `<theirs>.encoder.layers`."""
    o = ours.replace(".", r"\.")
    return [
        Rule(rf"{o}\.patch_embed\.proj\.weight", f"{theirs}.embeddings.patch_embedding.weight"),
        Rule(rf"{o}\.class_token", f"{theirs}.embeddings.class_embedding"),
        Rule(rf"{o}\.pos_embed", f"{theirs}.embeddings.position_embedding.weight"),
        Rule(rf"{o}\.pre_norm\.(weight|bias)", rf"{theirs}.pre_layrnorm.\1"),
        *clip_layer_rules(f"{ours}.blocks", layers or f"{theirs}.encoder.layers"),
        Rule(rf"{o}\.norm\.(weight|bias)", rf"{theirs}.post_layernorm.\1"),
    ]


class ClipText(nn.Module):
    """CLIP's text transformer: token + position embeddings, causal PreNormBlocks, final LayerNorm, read at the
    end-of-text token."""

    def __init__(self, cfg: dict):
        super().__init__()
        dim, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.eos_token_id = cfg["eos_token_id"]
        self.token_embed = nn.Embedding(cfg["vocab_size"], dim)
        self.pos_embed = nn.Parameter(torch.zeros(cfg["max_position_embeddings"], dim))
        self.blocks = nn.ModuleList(PreNormBlock(dim, cfg["num_attention_heads"], cfg["intermediate_size"],
                                                 act=cfg["hidden_act"], eps=eps) for _ in range(cfg["num_hidden_layers"]))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.eos_token_id == 2:
            # configs from before transformers#24773 carry eos_token_id=2; CLIP then pooled at the largest id
            return input_ids.argmax(dim=-1)
        # the first end-of-text token (the pad token may be the same one)
        return (input_ids == self.eos_token_id).int().argmax(dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, dim) pooled states. Right padding never reaches the end-of-text token under the causal mask, so
        `attention_mask` is not needed (transformers' combined causal + padding mask gives the same numbers)."""
        if input_ids.shape[1] > self.pos_embed.shape[0]:
            raise InvalidInput(f"text of {input_ids.shape[1]} tokens exceeds the model's {self.pos_embed.shape[0]}")
        x = self.token_embed(input_ids) + self.pos_embed[: input_ids.shape[1]]
        eos = self.eos_positions(input_ids)
        rows = torch.arange(x.shape[0], device=x.device)
        if not self.blocks:
            return self.norm(x[rows, eos])
        *body, last = self.blocks
        for block in body:
            x = block(x, is_causal=True)
        # the last block runs for the pooled row only, over the keys the causal mask lets it see
        visible = torch.arange(x.shape[1], device=x.device)[None, :] <= eos[:, None]
        pooled = last.forward_rows(x[rows, eos][:, None], x, mask=visible[:, None, None, :])
        return self.norm(pooled[:, 0])


def text_rules(ours: str, theirs: str) -> list[Rule]:
    """Rules for a ClipText at prefix `ours` stored at `theirs` (e.g. "text_model")."""
    o = ours.replace(".", r"\.")
    return [
        Rule(rf"{o}\.token_embed\.weight", f"{theirs}.embeddings.token_embedding.weight"),
        Rule(rf"{o}\.pos_embed", f"{theirs}.embeddings.position_embedding.weight"),
        *clip_layer_rules(f"{ours}.blocks", f"{theirs}.encoder.layers"),
        Rule(rf"{o}\.norm\.(weight|bias)", rf"{theirs}.final_layer_norm.\1"),
    ]


class ClipModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        vision_cfg, text_cfg = config["vision_config"], config["text_config"]
        self.vision = VisionTransformer(vision_spec(vision_cfg))
        self.text = ClipText(text_cfg)
        self.visual_projection = nn.Linear(vision_cfg["hidden_size"], config["projection_dim"], bias=False)
        self.text_projection = nn.Linear(text_cfg["hidden_size"], config["projection_dim"], bias=False)
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision.pooled(pixel_values))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.text_projection(self.text(input_ids, attention_mask))


RULES = [
    *vision_rules("vision", "vision_model"),
    *text_rules("text", "text_model"),
    Rule(r"(visual_projection|text_projection)\.weight", r"\1.weight"),
    Rule(r"logit_scale", "logit_scale"),
]
IGNORED = [r".*position_ids"]


def with_config_defaults(config: dict) -> dict:
    text, vision = tower_configs(config, TEXT_DEFAULTS, VISION_DEFAULTS)
    return {**config, "text_config": text, "vision_config": vision, "projection_dim": config.get("projection_dim", 512)}


def build_model(config: dict) -> ClipModel:
    """A randomly initialised CLIP of the given config (benchmarks)."""
    return ClipModel(with_config_defaults(config))


@dual_encoder("clip")
def load_clip(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> DualEncoder:
    config = with_config_defaults(ckpt.config)
    digest = ckpt.digest
    model = build_on_meta(lambda: ClipModel(config))
    load_model(model, ckpt, RULES, ignore=IGNORED, dtype=dtype, device=device, family="CLIP")
    tokenizer = load_tokenizer(ckpt.dir, default_max_length=config["text_config"]["max_position_embeddings"])
    # transformers fails on texts past the position table; we truncate there
    tokenizer.max_length = min(tokenizer.max_length, config["text_config"]["max_position_embeddings"])
    return DualEncoder(name=ckpt.name, family="clip", model=model, dim=config["projection_dim"], digest=digest,
                       image_preprocessor=ImagePreprocessor.from_checkpoint_dir(ckpt.dir), tokenizer=tokenizer,
                       device=device, dtype=dtype)
