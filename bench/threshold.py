"""Choosing a relevance cut-off (`min_score`), measured on the demo collection with the shipped demo model.

    python bench/threshold.py [--images 2000] [--out bench/results/threshold.json]

Writes the demo's synthetic collection (search/demo/shapes.py, with ground-truth labels), indexes it with
the shipped SigLIP demo model, then for each of the demo's text queries scores every item exactly and
sweeps a cut-off over the cosine scores: precision and recall of "score >= t" against the ground truth.
Reported: the single cut-off with the best mean F1 over all queries, how much worse that one shared
cut-off is than each query's own best, and the spread of the per-query best cut-offs (which says how far
scores mean the same thing from query to query). For SigLIP the sigmoid head turns a cosine into a match
probability, sigmoid(exp(logit_scale) * cos + logit_bias), printed beside the cut-off.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness  # noqa: F401  (import paths)
import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--out", default=str(harness.RESULTS / "threshold.json"))
    args = parser.parse_args()

    import encoders
    from indexer.jobs import JobOptions, index_paths
    from indexer.store import Store
    from search.demo import shapes
    from search.demo.run import MODEL_DIR

    tmp = Path(tempfile.mkdtemp(prefix="mmsearch-threshold-"))
    t0 = time.perf_counter()
    manifest = shapes.write_collection(tmp / "photos", args.images)
    labels = shapes.read_labels(manifest)
    enc = encoders.load(MODEL_DIR)
    with Store.open(tmp / "data") as store:
        index_paths(store, "demo", enc, [str(manifest)], JobOptions(workers=1))
        handle = store.collection("demo")
        ids, _dead, vectors, _dim = next(handle.catalog.all_live(handle.id, chunk=10 ** 7))
        rows = handle.get(ids.tolist(), with_vectors=False)
    names = [Path(rows[int(i)].uri).name for i in ids]
    print(f"indexed {len(names)} demo images in {time.perf_counter() - t0:.0f}s", flush=True)

    scale = float(enc.model.logit_scale.exp())
    bias = float(enc.model.logit_bias)
    grid = np.round(np.arange(-0.5, 1.0001, 0.005), 3)
    per_query = []
    f1_table = []
    for query in shapes.QUERIES:
        relevant = np.array([query.relevant(labels[n]) for n in names])
        if not relevant.any():
            continue
        scores = vectors @ enc.encode_texts([query.text])[0]
        kept = scores[None, :] >= grid[:, None]
        tp = (kept & relevant).sum(axis=1)
        precision = np.where(kept.sum(axis=1) > 0, tp / np.maximum(kept.sum(axis=1), 1), 1.0)
        recall = tp / relevant.sum()
        f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        best = int(f1.argmax())
        f1_table.append(f1)
        per_query.append({"query": query.text, "kind": query.kind, "relevant": int(relevant.sum()),
                          "best_cutoff": float(grid[best]), "best_f1": float(f1[best]),
                          "precision": precision, "recall": recall})
    f1_table = np.stack(f1_table)
    shared = int(f1_table.mean(axis=0).argmax())
    cutoff = float(grid[shared])
    for q in per_query:
        q["at_shared"] = {"precision": float(q["precision"][shared]), "recall": float(q["recall"][shared]),
                          "f1": float(f1_table[per_query.index(q)][shared])}
        del q["precision"], q["recall"]
    best_cutoffs = [q["best_cutoff"] for q in per_query]
    summary = {
        "shared_cutoff": cutoff,
        "shared_cutoff_match_probability": 1 / (1 + math.exp(-(scale * cutoff + bias))),
        "mean_f1_at_shared_cutoff": float(f1_table[:, shared].mean()),
        "mean_f1_at_each_querys_best": float(np.mean([q["best_f1"] for q in per_query])),
        "mean_precision_at_shared_cutoff": float(np.mean([q["at_shared"]["precision"] for q in per_query])),
        "mean_recall_at_shared_cutoff": float(np.mean([q["at_shared"]["recall"] for q in per_query])),
        "per_query_best_cutoff_median": statistics.median(best_cutoffs),
        "per_query_best_cutoff_range": [min(best_cutoffs), max(best_cutoffs)],
        "logit_scale_exp": scale, "logit_bias": bias,
    }
    print(f"\n{'query':55s} {'rel':>4s} {'best t':>7s} {'F1':>5s} | at t={cutoff:.3f}: {'P':>5s} {'R':>5s} {'F1':>5s}")
    for q in per_query:
        a = q["at_shared"]
        print(f"{q['query'][:55]:55s} {q['relevant']:4d} {q['best_cutoff']:7.3f} {q['best_f1']:5.2f} |"
              f"            {a['precision']:5.2f} {a['recall']:5.2f} {a['f1']:5.2f}")
    print(f"\nshared cut-off {cutoff:.3f} (SigLIP match probability {summary['shared_cutoff_match_probability']:.2f}): "
          f"mean F1 {summary['mean_f1_at_shared_cutoff']:.3f} vs {summary['mean_f1_at_each_querys_best']:.3f} with "
          f"each query's own best; per-query best cut-offs {summary['per_query_best_cutoff_range']}")
    out = {"model": str(MODEL_DIR), "images": len(names), "queries": per_query, "summary": summary,
           "command": "python bench/threshold.py " + " ".join(sys.argv[1:])}
    harness.save_json(args.out, out)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
