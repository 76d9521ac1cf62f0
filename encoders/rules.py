"""Name maps: which checkpoint tensor fills each of our parameters, and the loader that applies them.

A family lists `Rule`s from our parameter names (regexes) to the checkpoint's tensor names; the rule sets
shared by several families (CLIP-style and BERT-style layer stacks) are here too. `load_weights` fills a
module built on the meta device through such a list, strictly in both directions, reading tensors through
encoders/checkpoint.py; `load_model` then fuses the attention projections (encoders/layers.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from mmsearch.errors import CheckpointError

from .checkpoint import Checkpoint
from .layers import fuse_projections

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """Parameters whose name matches `ours` (a regex over our names) come from checkpoint tensor
    `theirs` (a template using the regex groups), optionally passed through `transform`."""

    ours: str
    theirs: str
    transform: Transform | None = None


def rows(index: int, parts: int) -> Transform:
    """The index-th of `parts` equal row blocks, for fused checkpoint tensors (e.g. in_proj_weight). Copied:
    a view would keep the whole fused tensor alive, once per block (ViT-g: +1.9 GB while loading)."""
    return lambda t: t.chunk(parts, dim=0)[index].clone()


def flat(t: torch.Tensor) -> torch.Tensor:
    """A vector stored with leading batch axes, e.g. a [CLS] embedding saved as (1, 1, dim) -> (dim,)."""
    return t.reshape(-1)


def flat_rows(t: torch.Tensor) -> torch.Tensor:
    """A table stored with a leading batch axis, e.g. positions saved as (1, T, dim) -> (T, dim)."""
    return t.reshape(-1, t.shape[-1])


def source_of(our_name: str, rules: Iterable[Rule]) -> tuple[str, Transform | None]:
    for rule in rules:
        m = re.fullmatch(rule.ours, our_name)
        if m:
            return m.expand(rule.theirs), rule.transform
    raise CheckpointError(f"internal: no checkpoint rule for our parameter {our_name!r}")


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Construct a module without allocating or initialising its weights."""
    with torch.device("meta"):
        return factory()


def load_weights(
    module: nn.Module,
    ckpt: Checkpoint,
    rules: list[Rule],
    *,
    ignore: Iterable[str] = (),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    family: str = "",
    keep_fp32: Iterable[str] = (),
) -> nn.Module:
    """Fill every parameter of `module` (built on the meta device) from `ckpt` through `rules`.

    Strict in both directions: a parameter without its checkpoint tensor, a checkpoint tensor that
    nothing uses (and that no `ignore` regex names), or a shape mismatch is a CheckpointError naming
    the file and the tensor. `keep_fp32` regexes name parameters kept in float32 whatever `dtype` is."""
    where = ckpt.describe_files()
    available = set(ckpt.tensor_names())
    used: set[str] = set()
    keep = [re.compile(p) for p in keep_fp32]
    label = f"{family} " if family else ""
    plan = []
    for our_name, param in list(module.named_parameters()):
        theirs, transform = source_of(our_name, rules)
        if theirs not in available:
            raise CheckpointError(f"{where}: tensor {theirs!r} is missing (needed for the {label}model's {our_name})")
        plan.append((our_name, param, theirs, transform))
    for our_name, param, theirs, transform in plan:
        target = torch.float32 if any(p.search(our_name) for p in keep) else dtype
        tensor = ckpt.read(theirs)
        if transform is not None:
            tensor = transform(tensor)
        if tuple(tensor.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{ckpt.file_of(theirs)}: tensor {theirs!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(param.shape)} for the {label}model's {our_name} (does config.json match the weights?)")
        value = tensor.to(device=device, dtype=target if tensor.is_floating_point() else tensor.dtype, copy=False)
        del tensor
        _set_parameter(module, our_name, nn.Parameter(value.contiguous(), requires_grad=False))
        used.add(theirs)
    ignored = [re.compile(p) for p in ignore]
    unexpected = sorted(n for n in available - used if not any(p.fullmatch(n) for p in ignored))
    if unexpected:
        shown = ", ".join(repr(n) for n in unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        raise CheckpointError(f"{ckpt.file_of(unexpected[0])}: unexpected tensor(s) {shown} "
                              f"(not part of a {label}model with this config)")
    ckpt.close()
    for buf_name, buf in list(module.named_buffers()):
        if buf.is_meta:
            raise CheckpointError(f"internal: buffer {buf_name} left on the meta device")
    return module


def load_model(module: nn.Module, ckpt: Checkpoint, rules: list[Rule], **options) -> nn.Module:
    """load_weights (same options), then fuse the attention projections and switch to eval mode: what
    every family does with a module built on the meta device."""
    load_weights(module, ckpt, rules, **options)
    return fuse_projections(module).eval()


def _set_parameter(module: nn.Module, dotted: str, value: nn.Parameter) -> None:
    *path, leaf = dotted.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    owner._parameters[leaf] = value


def clip_layer_rules(ours: str, theirs: str):
    """Checkpoint rules for a PreNormBlock stack stored in the CLIP naming (layer_norm1, self_attn.*_proj,
    layer_norm2, mlp.fc1/fc2), used by CLIP, SigLIP, AltCLIP's vision tower and GroupViT.
    `ours` / `theirs` are the stack prefixes, e.g. "vision.blocks" / "vision_model.encoder.layers"."""
    o, t = ours.replace(".", r"\."), theirs
    return [
        Rule(rf"{o}\.(\d+)\.norm(1|2)\.(weight|bias)", rf"{t}.\1.layer_norm\2.\3"),
        Rule(rf"{o}\.(\d+)\.attn\.(q|k|v|out)_proj\.(weight|bias)", rf"{t}.\1.self_attn.\2_proj.\3"),
        Rule(rf"{o}\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", rf"{t}.\1.mlp.\2.\3"),
    ]

def bert_embedding_rules(ours: str, theirs: str):
    """Checkpoint rules for TextEmbeddings stored in the BERT naming (word_embeddings, position_embeddings,
    token_type_embeddings, LayerNorm) under the prefixes `ours` / `theirs` (e.g. "text.embed" / "bert.embeddings")."""
    o = ours.replace(".", r"\.")
    return [
        Rule(rf"{o}\.word_embed\.weight", f"{theirs}.word_embeddings.weight"),
        Rule(rf"{o}\.pos_embed\.weight", f"{theirs}.position_embeddings.weight"),
        Rule(rf"{o}\.type_embed\.weight", f"{theirs}.token_type_embeddings.weight"),
        Rule(rf"{o}\.norm\.(weight|bias)", rf"{theirs}.LayerNorm.\1"),
    ]

def bert_layer_rules(ours: str, theirs: str):
    """Checkpoint rules for a PostNormBlock stack stored in the BERT naming (attention.self.query/key/value,
    attention.output.dense/LayerNorm, [crossattention.*], intermediate.dense, output.dense/LayerNorm), used by
    BERT, XLM-R (AltCLIP's text tower) and BLIP's text model. `ours` / `theirs` are the stack prefixes,
    e.g. "text.blocks" / "roberta.encoder.layer"."""
    o, t = ours.replace(".", r"\."), theirs
    rules = []
    for our_attn, our_norm, their_attn in (("attn", "attn_norm", "attention"), ("cross_attn", "cross_norm", "crossattention")):
        rules += [
            Rule(rf"{o}\.(\d+)\.{our_attn}\.q_proj\.(weight|bias)", rf"{t}.\1.{their_attn}.self.query.\2"),
            Rule(rf"{o}\.(\d+)\.{our_attn}\.k_proj\.(weight|bias)", rf"{t}.\1.{their_attn}.self.key.\2"),
            Rule(rf"{o}\.(\d+)\.{our_attn}\.v_proj\.(weight|bias)", rf"{t}.\1.{their_attn}.self.value.\2"),
            Rule(rf"{o}\.(\d+)\.{our_attn}\.out_proj\.(weight|bias)", rf"{t}.\1.{their_attn}.output.dense.\2"),
            Rule(rf"{o}\.(\d+)\.{our_norm}\.(weight|bias)", rf"{t}.\1.{their_attn}.output.LayerNorm.\2"),
        ]
    return rules + [
        Rule(rf"{o}\.(\d+)\.mlp\.fc1\.(weight|bias)", rf"{t}.\1.intermediate.dense.\2"),
        Rule(rf"{o}\.(\d+)\.mlp\.fc2\.(weight|bias)", rf"{t}.\1.output.dense.\2"),
        Rule(rf"{o}\.(\d+)\.mlp_norm\.(weight|bias)", rf"{t}.\1.output.LayerNorm.\2"),
    ]
