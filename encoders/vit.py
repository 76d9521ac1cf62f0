"""One configurable Vision Transformer for every image tower (SigLIP, CLIP / AltCLIP, BLIP / BLIP-2, GroupViT).

The towers differ only in a few switches, gathered in `ViTSpec`:

| tower          | patch bias | [CLS] | patch norm | pre-norm | pooled output            | eps / act           |
|----------------|------------|-------|------------|----------|--------------------------|---------------------|
| SigLIP         | yes        | no    | no         | no       | attention-probe head     | 1e-6 / gelu (tanh)  |
| CLIP, AltCLIP  | no         | yes   | no         | yes      | [CLS] after the final LN | 1e-5 / quick_gelu   |
| BLIP, BLIP-2   | yes        | yes   | no         | no       | [CLS] after the final LN | 1e-5, 1e-6 / gelu   |
| GroupViT       | yes        | no    | yes        | no       | (grouping stages follow) | 1e-5 / gelu         |

Positions are learned absolute embeddings over [CLS] + patches. `tokens()` returns every token after the
final LayerNorm (BLIP's image memory); `cls()` the [CLS] token alone, running the last block for that row
only (same numbers, a fraction of that block's cost); `pooled()` the image vector the spec names. Calling
the module gives `pooled()` when the spec pools and `tokens()` otherwise. Parameter names are
ours and shapes canonical (pos_embed (T, dim), class_token (dim,)); each family's rules reshape what its
checkpoint stores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .layers import MLP, Attention, PatchEmbed, PreNormBlock

POOLS = (None, "cls", "attention")


@dataclass(frozen=True)
class ViTSpec:
    dim: int
    depth: int
    heads: int
    mlp_hidden: int
    image_size: int
    patch_size: int
    channels: int = 3
    act: str = "gelu"
    eps: float = 1e-5
    patch_bias: bool = True
    class_token: bool = False
    patch_norm: bool = False   # LayerNorm on the patch embeddings, before positions are added (GroupViT)
    pre_norm: bool = False     # LayerNorm after positions, before the blocks (CLIP's pre_layrnorm)
    post_norm: bool = True     # final LayerNorm
    pool: str | None = None    # pooled(): "cls" token 0, "attention" SigLIP's probe head, None: no pooled output

    @classmethod
    def from_config(cls, cfg: dict, **layout) -> "ViTSpec":
        """A spec from a Hugging Face vision_config (with its defaults filled in) plus the tower's layout switches."""
        spec = cls(dim=cfg["hidden_size"], depth=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
                   mlp_hidden=cfg["intermediate_size"], image_size=cfg["image_size"], patch_size=cfg["patch_size"],
                   channels=cfg.get("num_channels", 3), act=cfg["hidden_act"], eps=cfg["layer_norm_eps"])
        return replace(spec, **layout)

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, not {self.pool!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + int(self.class_token)


class AttentionPoolHead(nn.Module):
    """A learned probe attends over all tokens; its output (plus an MLP) is the image embedding (SigLIP)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, act: str, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = Attention(dim, num_heads)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_hidden, act)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.probe.expand(tokens.shape[0], -1, -1), tokens)
        return (x + self.mlp(self.norm(x)))[:, 0]


class VisionTransformer(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec
        dim, eps = spec.dim, spec.eps
        self.patch_embed = PatchEmbed(spec.channels, dim, spec.patch_size, bias=spec.patch_bias)
        self.patch_norm = nn.LayerNorm(dim, eps=eps) if spec.patch_norm else None
        self.class_token = nn.Parameter(torch.zeros(dim)) if spec.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(spec.num_tokens, dim))
        self.pre_norm = nn.LayerNorm(dim, eps=eps) if spec.pre_norm else None
        self.blocks = nn.ModuleList(PreNormBlock(dim, spec.heads, spec.mlp_hidden, act=spec.act, eps=eps)
                                    for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim, eps=eps) if spec.post_norm else None
        self.head = AttentionPoolHead(dim, spec.heads, spec.mlp_hidden, spec.act, eps) if spec.pool == "attention" else None

    @property
    def dim(self) -> int:
        return self.spec.dim

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, C, H, W) -> the blocks' input tokens (B, T, dim)."""
        x = self.patch_embed(pixels)
        if self.patch_norm is not None:
            x = self.patch_norm(x)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.shape[0], 1, -1), x], dim=1)
        x = x + self.pos_embed
        return x if self.pre_norm is None else self.pre_norm(x)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.norm is None else self.norm(x)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Every output token after the final norm, (B, T, dim); token 0 is [CLS] when there is one."""
        x = self.embed(pixels)
        for block in self.blocks:
            x = block(x)
        return self._final_norm(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tower's output: the pooled vector when the spec pools, else every token."""
        return self.tokens(pixels) if self.spec.pool is None else self.pooled(pixels)

    def cls(self, pixels: torch.Tensor) -> torch.Tensor:
        """The [CLS] token after the final norm (B, dim). Only that row goes through the last block: the same
        numbers as tokens(pixels)[:, 0] for 1/T of that block's cost."""
        if self.class_token is None:
            raise ValueError("this vision tower has no [CLS] token")
        x = self.embed(pixels)
        if not self.blocks:
            return self._final_norm(x[:, 0])
        *body, last = self.blocks
        for block in body:
            x = block(x)
        return self._final_norm(last.forward_rows(x[:, :1], x)[:, 0])

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image vector (B, dim) the spec names: the probe head over all tokens, or the [CLS] token."""
        if self.spec.pool == "attention":
            return self.head(self.tokens(pixels))
        if self.spec.pool == "cls":
            return self.cls(pixels)
        raise ValueError("this vision tower has no pooled output (ViTSpec.pool is None)")
