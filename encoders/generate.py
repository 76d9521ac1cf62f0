"""Text generation shared by every captioner: greedy and beam search over a step function with a KV cache.

The search knows nothing about the model. A model plugs in through a `DecoderState`, one per `generate`
call, that owns its caches (self-attention caches grow by one position per step; cross-attention
caches to a fixed memory - image tokens, a T5 encoder output - are filled on the first step):

    state.step(input_ids)      input_ids (N, T) int64: the prompt on the first call (T may be 0 when the
                               state carries its own prefix, e.g. BLIP-2's query embeddings), then one token
                               per row (T = 1). Returns float logits (N, vocab) for the last position.
    state.reorder(index, same_groups=False)
                               keep rows `index` of every cache, in that order (rows may repeat). Called
                               once after the prompt to expand each item to its beams, after each beam
                               step to follow the surviving beams, and in greedy search to drop rows that
                               have finished. same_groups=True means every new row comes from a row of
                               the same item, so per-item data (a cross-attention cache) is unchanged and
                               need not be copied.

`LayerCaches` holds the per-layer KVCache objects and implements `reorder` for decoder-only models
(`cross=False`, e.g. OPT) and decoders with cross-attention (BLIP's text decoder, T5's decoder).

The search reproduces transformers' `generate` (greedy, and its vectorized beam search with
length_penalty / early_stopping and the "keep 2 x num_beams candidates" rule), so outputs are
token-identical to the reference for the same logits. Sequences are returned as lists of ids: the prompt
followed by the generated tokens, ending with `eos_id` when the model produced it.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from mmsearch.errors import InvalidInput

from .layers import KVCache


class DecoderState(Protocol):
    def step(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def reorder(self, index: torch.Tensor, same_groups: bool = False) -> None: ...


class LayerCaches:
    """One self-attention KVCache per layer and, with cross=True, one static cross-attention KVCache per layer."""

    def __init__(self, num_layers: int, cross: bool = False):
        self.self_attn = [KVCache() for _ in range(num_layers)]
        self.cross_attn = [KVCache(static=True) for _ in range(num_layers)] if cross else None

    @property
    def past_length(self) -> int:
        return len(self.self_attn[0]) if self.self_attn else 0

    def reorder(self, index: torch.Tensor, same_groups: bool = False) -> None:
        for cache in self.self_attn:
            cache.reorder(index)
        if self.cross_attn is not None and not same_groups:
            for cache in self.cross_attn:
                cache.reorder(index)


def generate(state: DecoderState, prompt_ids: torch.Tensor, *, eos_id: int, max_new_tokens: int,
             num_beams: int = 1, length_penalty: float = 1.0, early_stopping: bool | str = False,
             pad_id: int | None = None) -> list[list[int]]:
    """Generate up to `max_new_tokens` after `prompt_ids` (B, T) for each row; stop a row at `eos_id`.
    Returns B lists: the prompt ids then the generated ids (ending with eos_id if it was produced)."""
    if max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise InvalidInput(f"num_beams must be >= 1, got {num_beams}")
    if prompt_ids.shape[0] == 0:
        return []
    fill = pad_id if pad_id is not None else eos_id
    with torch.inference_mode():
        if num_beams == 1:
            generated = _greedy(state, prompt_ids, eos_id, max_new_tokens, fill)
        else:
            generated = _beam_search(state, prompt_ids, eos_id, max_new_tokens, num_beams, length_penalty,
                                     early_stopping, fill)
    prompts = prompt_ids.tolist()
    return [prompt + _until_eos(row, eos_id) for prompt, row in zip(prompts, generated.tolist())]


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens


def _greedy(state: DecoderState, prompt_ids: torch.Tensor, eos_id: int, max_new_tokens: int,
            fill: int) -> torch.Tensor:
    """argmax at each step. A row that produced eos leaves the batch (its cache rows are dropped), so
    finished captions cost nothing while the others go on; rows are independent, so results are unchanged."""
    batch = prompt_ids.shape[0]
    out = torch.full((batch, max_new_tokens), fill, dtype=torch.long)
    active = torch.arange(batch)
    logits = state.step(prompt_ids)
    for t in range(max_new_tokens):
        tokens = logits.float().argmax(dim=-1).cpu()
        out[active, t] = tokens
        if t == max_new_tokens - 1:
            break
        running = tokens.ne(eos_id)
        if not running.all():
            keep = running.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active, tokens = active[keep], tokens[keep]
            state.reorder(keep.to(logits.device))
        logits = state.step(tokens[:, None].to(logits.device))
    return out


def _beam_search(state: DecoderState, prompt_ids: torch.Tensor, eos_id: int, max_new_tokens: int, num_beams: int,
                 length_penalty: float, early_stopping: bool | str, fill: int) -> torch.Tensor:
    """transformers' vectorized beam search: per item, the top 2*num_beams continuations of all beams; those
    among the first num_beams that end (eos or length limit) enter the finished set with score
    logprob / generated_length ** length_penalty, the best num_beams unfinished ones keep running."""
    batch = prompt_ids.shape[0]
    nb, keep_k = num_beams, 2 * num_beams
    neg = -1.0e9
    logits = state.step(prompt_ids)
    device = logits.device
    vocab = logits.shape[-1]
    # every beam of an item starts from the same prompt, so the prompt runs once per item and is then copied
    state.reorder(torch.arange(batch, device=device).repeat_interleave(nb))
    log_probs = F.log_softmax(logits.float(), dim=-1).repeat_interleave(nb, dim=0)

    running = torch.full((batch, nb, max_new_tokens), fill, dtype=torch.long, device=device)
    running_scores = torch.zeros((batch, nb), dtype=torch.float, device=device)
    running_scores[:, 1:] = neg
    finished = running.clone()
    finished_scores = torch.full((batch, nb), neg, dtype=torch.float, device=device)
    finished_done = torch.zeros((batch, nb), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    top_mask = torch.cat([torch.ones(nb, dtype=torch.bool), torch.zeros(keep_k - nb, dtype=torch.bool)]).to(device)
    offsets = (torch.arange(batch, device=device) * nb)[:, None]

    for t in range(max_new_tokens):
        scores = (log_probs.view(batch, nb, vocab) + running_scores[:, :, None]).view(batch, nb * vocab)
        top_scores, top_index = torch.topk(scores, keep_k)
        top_beam, top_token = top_index // vocab, top_index % vocab
        top_seqs = torch.gather(running, 1, top_beam[:, :, None].expand(-1, -1, max_new_tokens)).clone()
        top_seqs[:, :, t] = top_token
        ends = top_token.eq(eos_id) | (t + 1 >= max_new_tokens)

        # the best num_beams continuations that did not end keep running
        run_scores = top_scores + ends.to(torch.float32) * neg
        next_index = torch.topk(run_scores, nb)[1]
        running = torch.gather(top_seqs, 1, next_index[:, :, None].expand(-1, -1, max_new_tokens))
        running_scores = torch.gather(run_scores, 1, next_index)
        source_beam = torch.gather(top_beam, 1, next_index)

        # ended continuations among the first num_beams compete for the finished set
        just_ended = ends & top_mask[None, :]
        cand = top_scores / ((t + 1) ** length_penalty)
        full = finished_done.all(dim=-1, keepdim=True) & (early_stopping is True)
        cand = cand + full.to(torch.float32) * neg
        cand = cand + (~improvable).to(torch.float32) * neg
        cand = cand + (~just_ended) * neg
        merged_scores = torch.cat([finished_scores, cand], dim=1)
        best = torch.topk(merged_scores, nb)[1]
        finished = torch.gather(torch.cat([finished, top_seqs], dim=1), 1, best[:, :, None].expand(-1, -1, max_new_tokens))
        finished_scores = torch.gather(merged_scores, 1, best)
        finished_done = torch.gather(torch.cat([finished_done, just_ended], dim=1), 1, best)

        # can a running beam still beat the worst finished one? (transformers' heuristic)
        generated = t + 1
        best_length = max_new_tokens if (early_stopping == "never" and length_penalty > 0.0) else generated
        best_possible = running_scores[:, :1] / (best_length ** length_penalty)
        worst = torch.where(finished_done, finished_scores.min(dim=1, keepdim=True)[0], neg)
        improvable = improvable & (best_possible > worst).any(dim=-1, keepdim=True)
        still_open = not (bool(finished_done.all()) and early_stopping is True)
        if not (bool(improvable.any()) and still_open and not bool(ends.all())):
            break
        state.reorder((source_beam + offsets).view(-1), same_groups=True)
        log_probs = F.log_softmax(state.step(running[:, :, t].reshape(-1, 1)).float(), dim=-1)
    return finished[:, 0].cpu()
