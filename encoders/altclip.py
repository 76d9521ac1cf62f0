"""AltCLIP (BAAI/AltCLIP, BAAI/AltCLIP-m9): OpenAI CLIP's ViT image tower with an XLM-RoBERTa text encoder
distilled into the same space. Image: CLS token after post-LN, projected. Text: XLM-R (post-LN BERT layers),
then pre_LN + `transformation` at the <s> token, projected. Checkpoint names map onto our blocks in `rules()`."""

from __future__ import annotations

import torch
from torch import nn

from mmsearch.errors import CheckpointError

from . import clip
from .api import DualEncoder, dual_encoder
from .checkpoint import Checkpoint
from .layers import PostNormBlock, TextEmbeddings, padding_mask
from .preprocess import ImagePreprocessor
from .rules import Rule, bert_embedding_rules, bert_layer_rules, build_on_meta, load_model
from .tokenize import load_tokenizer
from .vit import VisionTransformer


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
        first = last.forward_rows(x[:, :1], x, mask)
        return self.transformation(self.pre_norm(first[:, 0]))


class AltCLIPModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        vision_cfg, text_cfg = config["vision_config"], config["text_config"]
        self.vision = VisionTransformer(clip.vision_spec(vision_cfg))
        self.text = XLMRobertaText(text_cfg)
        self.visual_projection = nn.Linear(vision_cfg["hidden_size"], config["projection_dim"], bias=False)
        self.text_projection = nn.Linear(text_cfg["project_dim"], config["projection_dim"], bias=False)
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision.pooled(pixel_values))

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
        *clip.vision_rules("vision", "vision_model", layers=vision_layers),
        *bert_embedding_rules("text.embed", "text_model.roberta.embeddings"),
        *bert_layer_rules("text.blocks", text_layers),
        Rule(r"text\.pre_norm\.(weight|bias)", r"text_model.pre_LN.\1"),
        Rule(r"text\.transformation\.(weight|bias)", r"text_model.transformation.\1"),
        Rule(r"(visual_projection|text_projection)\.weight", r"\1.weight"),
        Rule(r"logit_scale", "logit_scale"),
    ]


# buffers saved by older transformers, and XLM-R's unused pooler
IGNORED = [r".*position_ids", r".*token_type_ids", r"text_model\.roberta\.pooler\..*"]

VISION_DEFAULTS = clip.VISION_DEFAULTS  # AltCLIPVisionConfig's defaults are CLIP's
TEXT_DEFAULTS = dict(vocab_size=250002, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, max_position_embeddings=514, hidden_act="gelu", layer_norm_eps=1e-5,
                     pad_token_id=1, type_vocab_size=1, project_dim=768)


def with_config_defaults(config: dict) -> dict:
    """Fill keys an AltCLIP config.json leaves at transformers' defaults (old `*_config_dict` keys included)."""
    text, vision = clip.tower_configs(config, TEXT_DEFAULTS, VISION_DEFAULTS)
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
