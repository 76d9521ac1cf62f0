"""Transformer building blocks shared by every model family.

Every family composes its towers from these blocks; a family file only says how they are arranged
and how checkpoint names map onto them. Attention always goes through F.scaled_dot_product_attention.
Parameter names are ours (q_proj/k_proj/v_proj/out_proj, fc1/fc2, norm1/norm2); `fuse_projections`
merges q/k/v into one matmul after loading, since one larger GEMM runs faster than three small ones.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activations named in Hugging Face configs (`hidden_act`)."""
    name = name.lower()
    if name in ("gelu", "gelu_python"):
        return F.gelu
    if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_accurate"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    raise ValueError(f"unsupported activation {name!r}")


class KVCache:
    """Keys and values of one attention layer kept across decoding steps, shape (B, H, T, Dh).
    A `static` cache (cross-attention to a fixed memory) is filled once and never grows."""

    def __init__(self, static: bool = False):
        self.static = static
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


class Attention(nn.Module):
    """Multi-head attention, self or cross (`context`), optionally cached.

    mask: bool (True = attend) or additive float, broadcastable to (B, H, Lq, Lk)."""

    def __init__(self, dim: int, num_heads: int, *, kv_dim: int | None = None, bias: bool = True,
                 out_bias: bool | None = None, scale: float | None = None, head_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        if head_dim is None and inner != dim:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.scale = scale
        kv_dim = kv_dim or dim
        self.q_proj = nn.Linear(dim, inner, bias=bias)
        self.k_proj = nn.Linear(kv_dim, inner, bias=bias)
        self.v_proj = nn.Linear(kv_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, dim, bias=bias if out_bias is None else out_bias)
        self.qkv: nn.Linear | None = None  # set by fuse_projections()
        self.kv: nn.Linear | None = None

    def fuse(self) -> None:
        """Merge q/k/v (self-attention) or k/v (cross-attention) weights into single projections."""
        if self.qkv is not None or self.kv is not None:
            return
        same_input = self.q_proj.in_features == self.k_proj.in_features
        parts = [self.q_proj, self.k_proj, self.v_proj] if same_input else [self.k_proj, self.v_proj]
        fused = _concat_linears(parts)
        if same_input:
            self.qkv = fused
        else:
            self.kv = fused
        # the separate k/v (and q) weights stay: cross-attention reuses q_proj; memory is shared below
        offset = 0
        for lin in parts:
            n = lin.out_features
            lin.weight = nn.Parameter(fused.weight[offset:offset + n], requires_grad=False)
            if lin.bias is not None:
                lin.bias = nn.Parameter(fused.bias[offset:offset + n], requires_grad=False)
            offset += n

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kv is not None:
            k, v = self.kv(context).chunk(2, dim=-1)
        else:
            k, v = self.k_proj(context), self.v_proj(context)
        return self._split_heads(k), self._split_heads(v)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *, mask: torch.Tensor | None = None,
                is_causal: bool = False, cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None and cache.static and len(cache):
            # cross-attention memory was projected on the first step
            q, k, v = self._split_heads(self.q_proj(x)), cache.k, cache.v
        else:
            if context is None and self.qkv is not None:
                q, k, v = (self._split_heads(t) for t in self.qkv(x).chunk(3, dim=-1))
            else:
                q = self._split_heads(self.q_proj(x))
                k, v = self.project_kv(x if context is None else context)
            if cache is not None:
                k, v = cache.extend(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                             scale=self.scale)
        b, h, t, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


def _concat_linears(parts: list[nn.Linear]) -> nn.Linear:
    weight = torch.cat([p.weight for p in parts], dim=0)
    has_bias = parts[0].bias is not None
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        fused.bias = nn.Parameter(torch.cat([p.bias for p in parts], dim=0), requires_grad=False)
    return fused


def fuse_projections(module: nn.Module) -> nn.Module:
    """Fuse the projections of every Attention in `module` (after weights are loaded)."""
    for sub in module.modules():
        if isinstance(sub, Attention):
            sub.fuse()
    return module


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu", bias: bool = True, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, out_dim or dim, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PreNormBlock(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)): ViT / CLIP / SigLIP / OPT layers."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *, act: str = "gelu", eps: float = 1e-5,
                 bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, bias=bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_hidden, act, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, is_causal: bool = False,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask, is_causal=is_causal, cache=cache)
        return x + self.mlp(self.norm2(x))

    def forward_rows(self, rows: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The block's output at `rows` (some positions of x, e.g. a pooled [CLS] token) attending over all of
        x: the same numbers as block(x) at those positions, for the cost of those rows only."""
        rows = rows + self.attn(self.norm1(rows), self.norm1(x), mask=mask)
        return rows + self.mlp(self.norm2(rows))


class PostNormBlock(nn.Module):
    """BERT-style layer: norm(x + attn(x)), [norm(x + cross_attn(x, memory))], norm(x + mlp(x)).
    Used by BERT/XLM-R text encoders, the BLIP text encoder/decoder and the BLIP-2 Q-Former."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, *, act: str = "gelu", eps: float = 1e-12,
                 cross_dim: int | None = None):
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = Attention(dim, num_heads, kv_dim=cross_dim) if cross_dim else None
        self.cross_norm = nn.LayerNorm(dim, eps=eps) if cross_dim else None
        self.mlp = MLP(dim, mlp_hidden, act)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, is_causal: bool = False, cache: KVCache | None = None,
                cross_cache: KVCache | None = None) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, mask=mask, is_causal=is_causal, cache=cache))
        if self.cross_attn is not None and memory is not None:
            x = self.cross_norm(x + self.cross_attn(x, memory, mask=memory_mask, cache=cross_cache))
        return self.mlp_norm(x + self.mlp(x))

    def forward_rows(self, rows: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The block's output (no cross-attention) at `rows`, some positions of x, attending over all of x."""
        rows = self.attn_norm(rows + self.attn(rows, x, mask=mask))
        return self.mlp_norm(rows + self.mlp(rows))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, C, H, W) -> (B, N, dim)."""

    def __init__(self, in_channels: int, dim: int, patch: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, L) 1/0 mask -> (B, 1, 1, L) bool mask for SDPA (True = attend), or additive when dtype is given."""
    keep = attention_mask[:, None, None, :].bool()
    if dtype is None:
        return keep
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def causal_padding_mask(attention_mask: torch.Tensor, query_len: int) -> torch.Tensor:
    """Bool (B, 1, Lq, Lk) mask: causal over the last `query_len` positions of Lk, and no padding keys."""
    total = attention_mask.shape[1]
    offset = total - query_len
    q_pos = torch.arange(query_len, device=attention_mask.device)[:, None] + offset
    k_pos = torch.arange(total, device=attention_mask.device)[None, :]
    causal = k_pos <= q_pos
    return causal[None, None] & attention_mask[:, None, None, :].bool()


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)


class TextEmbeddings(nn.Module):
    """BERT-family input embeddings: word + position (+ token type), then LayerNorm.

    With `padding_idx` set, positions follow RoBERTa / XLM-R (fairseq): real tokens count up from
    padding_idx + 1 and pad tokens sit at padding_idx; without it, positions are 0..L-1 (BERT, BLIP)."""

    def __init__(self, vocab_size: int, dim: int, max_positions: int, *, type_vocab_size: int = 0,
                 eps: float = 1e-12, padding_idx: int | None = None):
        super().__init__()
        self.padding_idx = padding_idx
        self.word_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_positions, dim)
        self.type_embed = nn.Embedding(type_vocab_size, dim) if type_vocab_size else None
        self.norm = nn.LayerNorm(dim, eps=eps)

    def positions(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        if self.padding_idx is None:
            return torch.arange(past_length, past_length + input_ids.shape[1], device=input_ids.device)[None]
        real = input_ids.ne(self.padding_idx).long()
        return (real.cumsum(dim=1) + past_length) * real + self.padding_idx

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                past_length: int = 0) -> torch.Tensor:
        x = self.word_embed(input_ids)
        if self.type_embed is not None:
            x = x + (self.type_embed(token_type_ids) if token_type_ids is not None else self.type_embed.weight[0])
        x = x + self.pos_embed(self.positions(input_ids, past_length))
        return self.norm(x)


class RMSNorm(nn.Module):
    """Scale-only norm without mean subtraction (T5's LayerNorm). The variance is taken in float32; with
    half-precision weights the normalised input is cast to the weight dtype before scaling, as T5 does."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class GatedMLP(nn.Module):
    """fc2(act(gate(x)) * up(x)): T5 v1.1 / Flan-T5 gated-GELU feed-forward (and SwiGLU-style MLPs)."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu_new", bias: bool = False):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.gate(x)) * self.up(x)
        # the output projection may be kept in float32 (T5 in float16 overflows there)
        return self.fc2(h.to(self.fc2.weight.dtype))


class RelativePositionBias(nn.Module):
    """T5's learned per-head attention bias over bucketed relative distances (key - query): exact buckets
    for short distances, log-spaced ones up to `max_distance`. Bidirectional (encoder) splits the buckets
    between both directions; unidirectional (decoder) only sees the past."""

    def __init__(self, num_buckets: int, max_distance: int, num_heads: int, bidirectional: bool):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embed = nn.Embedding(num_buckets, num_heads)

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        buckets = self.num_buckets
        offset = torch.zeros_like(relative)
        if self.bidirectional:
            buckets //= 2
            offset = (relative > 0).long() * buckets
            distance = relative.abs()
        else:
            distance = (-relative).clamp_min(0)
        exact = buckets // 2
        log_bucket = exact + (torch.log(distance.float() / exact) / math.log(self.max_distance / exact)
                              * (buckets - exact)).long()
        log_bucket = log_bucket.clamp_max(buckets - 1)
        return offset + torch.where(distance < exact, distance, log_bucket)

    def forward(self, query_len: int, key_len: int, query_offset: int = 0) -> torch.Tensor:
        """(1, H, query_len, key_len) bias; `query_offset` = positions already decoded (KV cache)."""
        device = self.embed.weight.device
        q = torch.arange(query_len, device=device)[:, None] + query_offset
        k = torch.arange(key_len, device=device)[None, :]
        return self.embed(self.bucket(k - q)).permute(2, 0, 1).unsqueeze(0)
