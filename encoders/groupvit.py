"""GroupViT (nvidia/groupvit-gcc-yfcc): a ViT whose stages merge image tokens into a few learned groups (hard,
argmax assignment at inference), with CLIP's causal text transformer; both towers end in 2-layer MLP heads
with BatchNorm. Besides the DualEncoder, the groups give a zero-shot segmentation: `segment()` says which
text each pixel belongs to. Checkpoint names map onto our blocks in RULES below."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmsearch.errors import InvalidInput

from . import clip
from .api import DualEncoder, dual_encoder
from .checkpoint import Checkpoint
from .layers import MLP, Attention, PreNormBlock, l2_normalize
from .preprocess import ImagePreprocessor
from .rules import Rule, build_on_meta, flat_rows, load_model
from .tokenize import load_tokenizer
from .vit import ViTSpec, VisionTransformer


class TokenMixer(MLP):
    """An MLP across the token axis: (B, n_in, C) -> (B, n_out, C); maps one set of group tokens onto another."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class GroupCrossAttention(nn.Module):
    """Group tokens read the image tokens: x + attn(x, image), then x + mlp(norm(x)), then a final norm."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, act: str, eps: float):
        super().__init__()
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_hidden, act)
        self.norm_post = nn.LayerNorm(dim, eps=eps)

    def forward(self, groups: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = groups + self.attn(groups, image)
        return self.norm_post(x + self.mlp(self.norm2(x)))


class HardAssign(nn.Module):
    """Each image token joins the group it scores highest with (a one-hot over groups, which is what
    transformers' straight-through hard softmax evaluates to); a group becomes the sum of its members'
    values / (count + assign_eps). Also returns the soft assignment (softmax over groups) used for masks."""

    def __init__(self, dim: int, assign_eps: float):
        super().__init__()
        self.scale = dim ** -0.5
        self.assign_eps = assign_eps
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, groups: torch.Tensor, image: torch.Tensor, want_soft: bool = False):
        # the argmax decides which group a token joins; bf16 would flip near-ties, so these scores stay fp32
        # (q_proj / k_proj are held in fp32, see KEEP_FP32)
        logits = (self.q_proj(groups.float()) @ self.k_proj(image.float()).transpose(1, 2)) * self.scale  # (B, G, N)
        hard = F.one_hot(logits.argmax(dim=1), logits.shape[1]).transpose(1, 2).to(image.dtype)
        weights = hard / (hard.sum(dim=-1, keepdim=True) + self.assign_eps)
        out = self.proj(weights @ self.v_proj(image))
        return out, (logits.softmax(dim=1) if want_soft else None)


class GroupingBlock(nn.Module):
    """Merge N image tokens into `num_output_group` tokens guided by `num_group_token` learned group tokens."""

    def __init__(self, cfg: dict, num_group_token: int, num_output_group: int):
        super().__init__()
        dim, eps, act = cfg["hidden_size"], cfg["layer_norm_eps"], cfg["hidden_act"]
        tokens_ratio, channels_ratio = cfg["assign_mlp_ratio"]
        self.norm_tokens = nn.LayerNorm(dim, eps=eps)
        self.mlp_inter = TokenMixer(num_group_token, int(tokens_ratio * dim), act, out_dim=num_output_group)
        self.norm_post_tokens = nn.LayerNorm(dim, eps=eps)
        self.norm_x = nn.LayerNorm(dim, eps=eps)
        self.pre_assign_attn = GroupCrossAttention(dim, cfg["num_attention_heads"], cfg["intermediate_size"], act, eps)
        self.assign = HardAssign(dim, cfg["assign_eps"])
        self.norm_new_x = nn.LayerNorm(dim, eps=eps)
        self.mlp_channels = MLP(dim, int(channels_ratio * dim), act)

    def forward(self, image: torch.Tensor, groups: torch.Tensor, want_soft: bool = False):
        groups, image = self.norm_tokens(groups), self.norm_x(image)
        groups = self.norm_post_tokens(self.mlp_inter(groups))
        groups = self.pre_assign_attn(groups, image)
        merged, soft = self.assign(groups, image, want_soft)
        merged = merged + groups
        return merged + self.mlp_channels(self.norm_new_x(merged)), soft


class GroupingStage(nn.Module):
    """PreNormBlocks over [image tokens, group tokens], then (if the stage has group tokens) grouping."""

    def __init__(self, cfg: dict, depth: int, num_group_token: int, num_output_group: int, num_prev_group: int):
        super().__init__()
        dim, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.num_group_token = num_group_token
        self.blocks = nn.ModuleList(PreNormBlock(dim, cfg["num_attention_heads"], cfg["intermediate_size"],
                                                 act=cfg["hidden_act"], eps=eps) for _ in range(depth))
        self.group_token = nn.Parameter(torch.zeros(1, num_group_token, dim)) if num_group_token else None
        self.grouping = GroupingBlock(cfg, num_group_token, num_output_group) if num_group_token else None
        if num_group_token and num_prev_group:
            self.project_norm = nn.LayerNorm(dim, eps=eps)
            self.project = TokenMixer(num_prev_group, dim // 2, cfg["hidden_act"], out_dim=num_group_token)
        else:
            self.project_norm = self.project = None

    def forward(self, x: torch.Tensor, prev_groups: torch.Tensor | None, want_soft: bool = False):
        if self.group_token is None:
            for block in self.blocks:
                x = block(x)
            return x, None, None
        groups = self.group_token.expand(x.shape[0], -1, -1)
        if self.project is not None:
            groups = groups + self.project(self.project_norm(prev_groups))
        x = torch.cat([x, groups], dim=1)
        for block in self.blocks:
            x = block(x)
        x, groups = x[:, :-self.num_group_token], x[:, -self.num_group_token:]
        merged, soft = self.grouping(x, groups, want_soft)
        return merged, groups, soft


class GroupViTVision(VisionTransformer):
    """The shared ViT's patch stage (patches, LayerNorm, positions; no [CLS]) and final LayerNorm, with grouping
    stages in place of the plain blocks."""

    def __init__(self, cfg: dict):
        spec = ViTSpec.from_config(cfg, depth=0, patch_bias=True, patch_norm=True, class_token=False)
        super().__init__(spec)
        groups, outputs = cfg["num_group_tokens"], cfg["num_output_groups"]
        self.stages = nn.ModuleList(
            GroupingStage(cfg, depth, groups[i], outputs[i], outputs[i - 1] if i else 0)
            for i, depth in enumerate(cfg["depths"]))

    def forward(self, pixels: torch.Tensor, want_soft: bool = False):
        """-> final group tokens (B, G, C) after the last norm, and the soft assignment of each grouping stage."""
        x = self.embed(pixels)
        groups, assignments = None, []
        for stage in self.stages:
            x, groups, soft = stage(x, groups, want_soft)
            if soft is not None:
                assignments.append(soft)
        return self.norm(x), assignments


class ProjectionHead(nn.Module):
    """Linear -> BatchNorm (inference statistics) -> ReLU -> Linear."""

    def __init__(self, dim: int, hidden: int, out: int, eps: float = 1e-5):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.bn_weight = nn.Parameter(torch.ones(hidden))
        self.bn_bias = nn.Parameter(torch.zeros(hidden))
        self.bn_mean = nn.Parameter(torch.zeros(hidden))
        self.bn_var = nn.Parameter(torch.ones(hidden))
        self.eps = eps
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(self.fc1(x), self.bn_mean, self.bn_var, self.bn_weight, self.bn_bias, False, 0.0, self.eps)
        return self.fc2(F.relu(x))


class GroupViTModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        vision_cfg, text_cfg = config["vision_config"], config["text_config"]
        dim, hidden = config["projection_dim"], config["projection_intermediate_dim"]
        self.vision = GroupViTVision(vision_cfg)
        self.text = clip.ClipText(text_cfg)
        self.visual_projection = ProjectionHead(vision_cfg["hidden_size"], hidden, dim)
        self.text_projection = ProjectionHead(text_cfg["hidden_size"], hidden, dim)
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        groups, _ = self.vision(pixel_values)
        return self.visual_projection(groups.mean(dim=1))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.text_projection(self.text(input_ids, attention_mask))

    def segmentation_logits(self, pixel_values: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W) scores of each of T (L2-normalised) text embeddings at each input pixel: each group's
        embedding scored against the texts, spread over the pixels by the chained soft assignments."""
        groups, assignments = self.vision(pixel_values, want_soft=True)
        b, g, c = groups.shape
        group_embeds = l2_normalize(self.visual_projection(groups.reshape(b * g, c)).float()).reshape(b, g, -1)
        pixel_to_group = assignments[0].transpose(1, 2)  # (B, N, G1)
        for soft in assignments[1:]:
            pixel_to_group = pixel_to_group @ soft.transpose(1, 2)  # (B, N, G_k)
        height, width = pixel_values.shape[2:]
        grouping = _resize_assignment(pixel_to_group.transpose(1, 2), height, width)  # (B, G, H, W)
        scale = self.logit_scale.float().exp()
        per_group = (group_embeds @ text_embeds.float().t()).transpose(1, 2) * scale  # (B, T, G)
        logits = (per_group @ grouping.reshape(b, g, -1)) * scale
        return logits.reshape(b, -1, height, width)


def _resize_assignment(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, G, N) assignment over the patch grid -> (B, G, height, width), bilinear. The grid's shape is
    recovered from the image's aspect ratio the way transformers does it."""
    b, g, n = maps.shape
    scale = (height * width // n) ** 0.5
    if height > width:
        grid_w = int(np.round(width / scale))
        grid_h = n // grid_w
    else:
        grid_h = int(np.round(height / scale))
        grid_w = n // grid_h
    return F.interpolate(maps.reshape(b, g, grid_h, grid_w), size=(height, width), mode="bilinear", align_corners=False)


def _head_rules(ours: str, theirs: str) -> list[Rule]:
    return [
        Rule(rf"{ours}\.fc1\.(weight|bias)", rf"{theirs}.0.\1"),
        Rule(rf"{ours}\.bn_(weight|bias)", rf"{theirs}.1.\1"),
        Rule(rf"{ours}\.bn_mean", f"{theirs}.1.running_mean"),
        Rule(rf"{ours}\.bn_var", f"{theirs}.1.running_var"),
        Rule(rf"{ours}\.fc2\.(weight|bias)", rf"{theirs}.3.\1"),
    ]


_STAGE, _THEIRS = r"vision\.stages\.(\d+)", r"vision_model.encoder.stages.\1"
RULES = [
    Rule(r"vision\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embeddings.projection.\1"),
    Rule(r"vision\.patch_norm\.(weight|bias)", r"vision_model.embeddings.layernorm.\1"),
    Rule(r"vision\.pos_embed", "vision_model.embeddings.position_embeddings", flat_rows),
    # each stage's PreNormBlocks, in the CLIP naming (clip_layer_rules with the stage index in front)
    Rule(rf"{_STAGE}\.blocks\.(\d+)\.norm(1|2)\.(weight|bias)", rf"{_THEIRS}.layers.\2.layer_norm\3.\4"),
    Rule(rf"{_STAGE}\.blocks\.(\d+)\.attn\.(q|k|v|out)_proj\.(weight|bias)", rf"{_THEIRS}.layers.\2.self_attn.\3_proj.\4"),
    Rule(rf"{_STAGE}\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", rf"{_THEIRS}.layers.\2.mlp.\3.\4"),
    Rule(rf"{_STAGE}\.group_token", rf"{_THEIRS}.group_token"),
    Rule(rf"{_STAGE}\.project_norm\.(weight|bias)", rf"{_THEIRS}.group_projector.0.\2"),
    Rule(rf"{_STAGE}\.project\.(fc1|fc2)\.(weight|bias)", rf"{_THEIRS}.group_projector.1.\2.\3"),
    # inside the grouping block our names are the checkpoint's (`downsample.*`)
    Rule(rf"{_STAGE}\.grouping\.(.+)", rf"{_THEIRS}.downsample.\2"),
    Rule(r"vision\.norm\.(weight|bias)", r"vision_model.layernorm.\1"),
    *clip.text_rules("text", "text_model"),
    *_head_rules("visual_projection", "visual_projection"),
    *_head_rules("text_projection", "text_projection"),
    Rule(r"logit_scale", "logit_scale"),
]
IGNORED = [r".*position_ids", r".*num_batches_tracked"]
KEEP_FP32 = [r"grouping\.assign\.(q|k)_proj\."]

VISION_DEFAULTS = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, depths=[6, 3, 3],
                       num_group_tokens=[64, 8, 0], num_output_groups=[64, 8, 8], num_attention_heads=6,
                       image_size=224, patch_size=16, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5,
                       assign_eps=1.0, assign_mlp_ratio=[0.5, 4])
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=256, intermediate_size=1024, num_hidden_layers=12,
                     num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                     pad_token_id=1, bos_token_id=49406, eos_token_id=49407)


def with_config_defaults(config: dict) -> dict:
    """Fill keys a GroupViT config.json leaves at transformers' defaults (old `*_config_dict` keys included)."""
    text, vision = clip.tower_configs(config, TEXT_DEFAULTS, VISION_DEFAULTS)
    ratio = vision["assign_mlp_ratio"]
    vision["assign_mlp_ratio"] = list(ratio) if isinstance(ratio, (list, tuple)) else [ratio, ratio]
    return {**config, "text_config": text, "vision_config": vision,
            "projection_dim": config.get("projection_dim", 256),
            "projection_intermediate_dim": config.get("projection_intermediate_dim", 4096)}


def build_model(config: dict) -> GroupViTModel:
    """A randomly initialised GroupViT of the given config (benchmarks)."""
    return GroupViTModel(with_config_defaults(config))


class GroupViTEncoder(DualEncoder):
    """A DualEncoder that can also segment: which of the given texts each pixel of an image shows."""

    model: GroupViTModel

    def segmentation_logits(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        """float32 (n_images, n_texts, H, W) at the model's input resolution (after resize and crop),
        as transformers' GroupViTModel(output_segmentation=True) returns them."""
        texts = list(texts)
        if not texts:
            raise InvalidInput("segmentation needs at least one text (one label per region)")
        text_embeds = torch.from_numpy(self.encode_texts(texts)).to(self.device)
        with torch.inference_mode():
            pixels = self.image_preprocessor(list(images)).to(self.device, self.dtype)
            return self.model.segmentation_logits(pixels, text_embeds).float().cpu().numpy()

    def segment(self, image: Image.Image, texts: list[str]) -> np.ndarray:
        """int64 (H, W): for each pixel of the model's input view of `image`, the index in `texts` of the
        text its region matches best."""
        return self.segmentation_logits([image], texts)[0].argmax(axis=0)


def segment(encoder: GroupViTEncoder, image: Image.Image, texts: list[str]) -> np.ndarray:
    """Per-pixel text index map (H, W) of `image` for `texts`; see GroupViTEncoder.segment."""
    if not isinstance(encoder, GroupViTEncoder):
        raise InvalidInput(f"segmentation needs a GroupViT encoder, got {getattr(encoder, 'family', type(encoder).__name__)}")
    return encoder.segment(image, texts)


@dual_encoder("groupvit")
def load_groupvit(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> GroupViTEncoder:
    config = with_config_defaults(ckpt.config)
    digest = ckpt.digest
    model = build_on_meta(lambda: GroupViTModel(config))
    load_model(model, ckpt, RULES, ignore=IGNORED, dtype=dtype, device=device, family="GroupViT",
               keep_fp32=KEEP_FP32)
    tokenizer = load_tokenizer(ckpt.dir, default_max_length=config["text_config"]["max_position_embeddings"])
    return GroupViTEncoder(name=ckpt.name, family="groupvit", model=model, dim=config["projection_dim"], digest=digest,
                           image_preprocessor=ImagePreprocessor.from_checkpoint_dir(ckpt.dir), tokenizer=tokenizer,
                           device=device, dtype=dtype)
