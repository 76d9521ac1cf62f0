"""Hybrid search: the keyword list and its fusion with the vector list by reciprocal rank fusion.

A query with keywords and a text / image / vector / item ranks two lists over the same collection and
filter: the first stage's nearest vectors and the catalog's keyword matches (indexer/text_index.py: every
word must appear; bm25 on SQLite, ts_rank on PostgreSQL). They are fused by reciprocal rank fusion (Cormack,
Clarke & Büttcher, SIGIR 2009), the usual way to join rankings whose scores are not comparable:

    rrf(item) = sum over the lists holding it of 1 / (RRF_K + rank)     rank 1 = a list's best, RRF_K = 60

Each list contributes its top `window` = max(FUSION_DEPTH, top_k, rerank depth) items, a number that does
not depend on `offset`, so every page of one query is a slice of one fused list (at most 2 x window long).
Ties go to the better rank in either list, then the lower id. Hits carry the fused score as `score` and
`vector_score` (cosine) / `keyword_score` for the lists they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

RRF_K = 60
FUSION_DEPTH = 100


@dataclass(slots=True)
class Ranked:
    """A first-stage candidate of a keyword or hybrid query (the pipeline reads id and score)."""

    id: int
    score: float
    vector_score: float | None = None
    keyword_score: float | None = None


def keyword_hits(matches: list[tuple[int, float]]) -> list[Ranked]:
    """Catalog.keyword_search rows as candidates ranked by their keyword score."""
    return [Ranked(id=i, score=s, keyword_score=s) for i, s in matches]


def fuse(vector_hits, keyword_matches: list[tuple[int, float]], *, k: int = RRF_K) -> list[Ranked]:
    """The reciprocal rank fusion of a vector list (objects with id and score, best first) and keyword
    matches [(id, score)], best first."""
    fused: dict[int, Ranked] = {}
    best: dict[int, int] = {}
    for rank, hit in enumerate(vector_hits, 1):
        fused[int(hit.id)] = Ranked(id=int(hit.id), score=1.0 / (k + rank), vector_score=float(hit.score))
        best[int(hit.id)] = rank
    for rank, (item_id, score) in enumerate(keyword_matches, 1):
        entry = fused.get(item_id)
        if entry is None:
            entry = fused[item_id] = Ranked(id=item_id, score=0.0)
            best[item_id] = rank
        entry.score += 1.0 / (k + rank)
        entry.keyword_score = float(score)
        best[item_id] = min(best[item_id], rank)
    return sorted(fused.values(), key=lambda r: (-r.score, best[r.id], r.id))
