"""AltCLIP (BAAI/AltCLIP, BAAI/AltCLIP-m9): OpenAI CLIP's ViT image tower with an XLM-RoBERTa text encoder
distilled into the same space. Image: CLS token after post-LN, projected. Text: XLM-R (post-LN BERT layers),
then pre_LN + `transformation` at the <s> token, projected. Checkpoint names map onto our blocks in `rules()`."""

from __future__ import annotations

import torch
from torch import nn

from .api import DualEncoder, dual_encoder
from .checkpoint import Checkpoint, Rule, build_on_meta, load_model
from mmsearch.errors import CheckpointError
from .layers import (PatchEmbed, PostNormBlock, PreNormBlock, TextEmbeddings, bert_embedding_rules, bert_layer_rules,
                     clip_layer_rules, padding_mask)
from .preprocess import ImagePreprocessor
from .tokenize import load_tokenizer


class ClipVisionTower(nn.Module):
    """CLIP's ViT: [CLS] + patches + positions, pre-LN, PreNormBlocks, post-LN on the CLS token."""

    def __init__(self, cfg: dict):
        super().__init__()
        dim, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
        patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
        self.patch_embed = PatchEmbed(cfg["num_channels"], dim, cfg["patch_size"], bias=False)
        self.class_embed = nn.Parameter(torch.zeros(dim))
        self.pos_embed = nn.Parameter(torch.zeros(patches + 1, dim))
        self.pre_norm = nn.LayerNorm(dim, eps=eps)
        self.blocks = nn.ModuleList(PreNormBlock(dim, heads, cfg["intermediate_size"], act=cfg["hidden_act"], eps=eps)
                                    for _ in range(cfg["num_hidden_layers"]))
        self.post_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixels)
        cls = self.class_embed.to(patches.dtype).expand(patches.shape[0], 1, -1)
        x = self.pre_norm(torch.cat([cls, patches], dim=1) + self.pos_embed)
        *body, last = self.blocks
        for block in body:
            x = block(x)
        # only the CLS token is pooled: the last block attends from it alone (same numbers, 1/L of that block)
        cls = x[:, :1]
        cls = cls + last.attn(last.norm1(cls), last.norm1(x))
        cls = cls + last.mlp(last.norm2(cls))
        return self.post_norm(cls[:, 0])


class XLMRobertaText(nn.Module):
    """XLM-R encoder (post-LN layers) followed by AltCLIP's pre_LN + transformation, read at <s>."""

    def __init__(self, cfg: dict):
        super().__init__()
        dim, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.embed = TextEmbeddings(cfg["vocab_size"], dim, cfg["max_position_embeddings"],
                                    type_vocab_size=cfg["type_vocab_size"], eps=eps, padding_idx=cfg["pad_token_id"])
        self.blocks = nn.ModuleList(
            PostNormBlock(dim, cfg["num_attention_heads"], cfg["intermediate_size"], act=cfg["hidden_act"], eps=eps)
            for _ in range(cfg["num_hidden_layers"]))
        self.pre_norm = nn.LayerNorm(dim, eps=eps)
        self.transformation = nn.Linear(dim, cfg["project_dim"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(input_ids)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        *body, last = self.blocks
        for block in body:
            x = block(x, mask)
        # only the <s> token is pooled: the last layer (and pre_LN + transformation) run for it alone
        first = x[:, :1]
        first = last.attn_norm(first + last.attn(first, x, mask=mask))
        first = last.mlp_norm(first + last.mlp(first))
        return self.transformation(self.pre_norm(first[:, 0]))


class AltCLIPModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        vision_cfg, text_cfg = config["vision_config"], config["text_config"]
        self.vision = ClipVisionTower(vision_cfg)
        self.text = XLMRobertaText(text_cfg)
        self.visual_projection = nn.Linear(vision_cfg["hidden_size"], config["projection_dim"], bias=False)
        self.text_projection = nn.Linear(text_cfg["project_dim"], config["projection_dim"], bias=False)
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision(pixel_values))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.text_projection(self.text(input_ids, attention_mask))


def _stack_name(names: list[str], prefix: str, where: str) -> str:
    """Layer stacks are saved as `<prefix>.layer.N` (XLM-R, transformers' own saves) or `<prefix>.layers.N`
    (CLIP-style hub snapshots); use whichever this checkpoint has."""
    for stack in ("layers", "layer"):
        if any(n.startswith(f"{prefix}.{stack}.") for n in names):
            return f"{prefix}.{stack}"
    raise CheckpointError(f"{where}: no tensors named {prefix}.layer.N or {prefix}.layers.N (not an AltCLIP checkpoint?)")


def rules(ckpt: Checkpoint) -> list[Rule]:
    names, where = ckpt.tensor_names(), ckpt.describe_files()
    vision_layers = _stack_name(names, "vision_model.encoder", where)
    text_layers = _stack_name(names, "text_model.roberta.encoder", where)
    return [
        Rule(r"vision\.patch_embed\.proj\.weight", "vision_model.embeddings.patch_embedding.weight"),
        Rule(r"vision\.class_embed", "vision_model.embeddings.class_embedding"),
        Rule(r"vision\.pos_embed", "vision_model.embeddings.position_embedding.weight"),
        Rule(r"vision\.pre_norm\.(weight|bias)", r"vision_model.pre_layrnorm.\1"),
        *clip_layer_rules("vision.blocks", vision_layers),
        Rule(r"vision\.post_norm\.(weight|bias)", r"vision_model.post_layernorm.\1"),
        *bert_embedding_rules("text.embed", "text_model.roberta.embeddings"),
        *bert_layer_rules("text.blocks", text_layers),
        Rule(r"text\.pre_norm\.(weight|bias)", r"text_model.pre_LN.\1"),
        Rule(r"text\.transformation\.(weight|bias)", r"text_model.transformation.\1"),
        Rule(r"(visual_projection|text_projection)\.weight", r"\1.weight"),
        Rule(r"logit_scale", "logit_scale"),
    ]


# buffers saved by older transformers, and XLM-R's unused pooler
IGNORED = [r".*position_ids", r".*token_type_ids", r"text_model\.roberta\.pooler\..*"]

VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                       layer_norm_eps=1e-5)
TEXT_DEFAULTS = dict(vocab_size=250002, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, max_position_embeddings=514, hidden_act="gelu", layer_norm_eps=1e-5,
                     pad_token_id=1, type_vocab_size=1, project_dim=768)


def with_config_defaults(config: dict) -> dict:
    """Fill keys an AltCLIP config.json leaves at transformers' defaults. Old snapshots keep the towers in
    `text_config_dict` / `vision_config_dict`, which win over `text_config` / `vision_config` (as in transformers)."""
    towers = {}
    for key, defaults in (("text", TEXT_DEFAULTS), ("vision", VISION_DEFAULTS)):
        given, legacy = config.get(f"{key}_config") or {}, config.get(f"{key}_config_dict")
        towers[key] = {**given, **defaults, **legacy} if legacy is not None else {**defaults, **given}
    text, vision = towers["text"], towers["vision"]
    return {**config, "text_config": text, "vision_config": vision, "projection_dim": config.get("projection_dim", 768)}


def build_model(config: dict) -> AltCLIPModel:
    """A randomly initialised AltCLIP of the given config (benchmarks)."""
    return AltCLIPModel(with_config_defaults(config))


@dual_encoder("altclip")
def load_altclip(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> DualEncoder:
    config = with_config_defaults(ckpt.config)
    digest = ckpt.digest
    model = build_on_meta(lambda: AltCLIPModel(config))
    load_model(model, ckpt, rules(ckpt), ignore=IGNORED, dtype=dtype, device=device, family="AltCLIP")
    text_cfg = config["text_config"]
    # XLM-R positions start after padding_idx, so the text limit is two short of the position table
    tokenizer = load_tokenizer(ckpt.dir, default_max_length=text_cfg["max_position_embeddings"] - text_cfg["pad_token_id"] - 1)
    return DualEncoder(name=ckpt.name, family="altclip", model=model, dim=config["projection_dim"], digest=digest,
                       image_preprocessor=ImagePreprocessor.from_checkpoint_dir(ckpt.dir), tokenizer=tokenizer,
                       device=device, dtype=dtype)
