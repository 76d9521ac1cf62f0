"""Hybrid search (keywords fused with the vector list): what it finds, and what it costs.

    python bench/hybrid.py                        # both parts, writes bench/results/hybrid.json
    python bench/hybrid.py --items 300000 --rounds 200 --demo-images 2000

1. Recall on the demo collection (search/demo, its trained model) with captions stored: the captions are
   the demo's own caption grammar (shapes.caption_for: true, always the shape, the colour 70% of the time,
   count / size / background sometimes), written onto the indexed items by Upsert. Two query sets:
   - file-name queries: the text is a file's name ("img_00042"); the one relevant image is that file;
   - caption-word queries: the demo's text queries ("a red circle"), keywords = their words without
     a / an / on / the; relevant = the demo's ground truth (shapes.Query.relevant).
   recall@10 vector-only (the text alone) vs hybrid (the text + keywords, reciprocal rank fusion).
2. Overhead at scale: N synthetic items (random unit vectors, captions of 8 words from a 5000-word
   vocabulary, so a word is in ~0.16% of captions; one word in 10% of them) in a SQLite catalog with a flat
   index; Searcher.search on a vector alone (A) and on the same vector + keywords (B), interleaved A B A B
   over `rounds` rounds with a new query each round; per-round difference B - A in ms: median and spread,
   per keyword kind (one rare word, two rare words, a file name, the common word).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import harness  # noqa: F401  (import paths)
import numpy as np

GOAL_MS = 5.0
STOP = {"a", "an", "on", "the"}


def recall_part(workdir: Path, n_images: int) -> dict:
    from indexer.store import Store, UpsertRow
    from search.demo import run as demo
    from search.demo import shapes
    from search.models import Models
    from search.pipeline import Query, Searcher

    data = workdir / "demo"
    manifest = demo.build_collection(data, n_images, workers=0)
    labels = shapes.read_labels(manifest)
    with Store.open(data) as store:
        handle = store.collection(demo.COLLECTION)
        ids = [int(i) for i in store.catalog.select_ids(handle.id)]
        rows = handle.get(ids)
        rng = np.random.default_rng(0)
        captions = {}
        updates = []
        for row in sorted(rows.values(), key=lambda r: r.id):
            name = os.path.basename(row.uri)
            captions[name] = shapes.caption_for(labels[name], rng).text
            updates.append(UpsertRow(uri=row.uri, sha256=row.sha256, width=row.width, height=row.height,
                                     vector=row.vector_array(), caption=captions[name]))
        for start in range(0, len(updates), 1000):
            handle.upsert(updates[start:start + 1000])
        models = Models(batching=False)
        searcher = Searcher(store, models)

        def ranked(**kw) -> list[str]:
            result = searcher.search(Query(collection=demo.COLLECTION, top_k=10, **kw))
            return [os.path.basename(h.uri) for h in result.hits]

        names = sorted(labels)
        picked = [names[i] for i in np.random.default_rng(1).choice(len(names), 50, replace=False)]
        file_rows = []
        for name in picked:
            stem = name.rsplit(".", 1)[0]
            vec, hyb = ranked(text=stem), ranked(text=stem, keywords=stem)
            file_rows.append({"query": stem, "vector": float(name in vec), "hybrid": float(name in hyb)})
        caption_rows = []
        for q in shapes.QUERIES:
            words = " ".join(w for w in q.text.split() if w not in STOP)
            vec, hyb = ranked(text=q.text), ranked(text=q.text, keywords=words)
            caption_rows.append({"query": q.text, "keywords": words,
                                 "vector": round(shapes.recall_at_k(vec, q, labels), 3),
                                 "hybrid": round(shapes.recall_at_k(hyb, q, labels), 3)})
        models.close()

    def mean(rows, key):
        return round(sum(r[key] for r in rows) / len(rows), 3)

    out = {"images": n_images, "captions": "shapes.caption_for (true, partial)",
           "file_name_queries": {"n": len(file_rows), "recall@10_vector": mean(file_rows, "vector"),
                                 "recall@10_hybrid": mean(file_rows, "hybrid")},
           "caption_word_queries": {"n": len(caption_rows), "recall@10_vector": mean(caption_rows, "vector"),
                                    "recall@10_hybrid": mean(caption_rows, "hybrid"), "queries": caption_rows}}
    print(f"demo, {n_images} images: file-name queries recall@10 vector {out['file_name_queries']['recall@10_vector']}"
          f" hybrid {out['file_name_queries']['recall@10_hybrid']}; caption-word queries vector "
          f"{out['caption_word_queries']['recall@10_vector']} hybrid {out['caption_word_queries']['recall@10_hybrid']}")
    return out


def _vocabulary(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(letters, rng.integers(4, 9))))
    return sorted(words)


def synthetic_store(workdir: Path, n: int, dim: int, db: str | None = None):
    from indexer.catalog import NewItem
    from indexer.store import Store
    from indexer_helpers import FakeBinding

    data = workdir / (f"synthetic-{n}-{dim}" + ("-pg" if db else ""))
    vocab = _vocabulary(5000)
    common = "common"
    marker = data / "complete"
    if db or not marker.exists():  # a PostgreSQL database is a fresh one each run
        shutil.rmtree(data, ignore_errors=True)
        t0 = time.perf_counter()
        with Store.open(data, db=db) as store:
            handle = store.create_collection("synthetic", FakeBinding(dim=dim), "flat")
            rng = np.random.default_rng(0)
            for start in range(0, n, 20_000):
                m = min(20_000, n - start)
                vecs = rng.standard_normal((m, dim)).astype(np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                picks = rng.integers(0, len(vocab), (m, 8))
                items = []
                for j in range(m):
                    i = start + j
                    words = [vocab[w] for w in picks[j]]
                    if i % 10 == 0:
                        words[3] = common
                    items.append(NewItem(uri=f"/photos/IMG_{i:06d}_{words[0]}-{words[1]}.jpg",
                                         sha256=hashlib.sha256(str(i).encode()).hexdigest(), width=640, height=480,
                                         vector=vecs[j].astype("<f4").tobytes(), caption=" ".join(words[2:]),
                                         meta={"i": i}))
                with store.catalog.write(handle.id) as (s, rev):
                    store.catalog.insert_items(s, handle.id, rev, items)
            store.catalog.analyze()
            handle.save_index()
        marker.write_text("ok")
        print(f"built {n} synthetic items in {time.perf_counter() - t0:.0f}s")
    return data, vocab, common


def overhead_part(workdir: Path, n: int, dim: int, rounds: int, db: str | None = None) -> dict:
    from indexer.store import Store
    from search.pipeline import Query, Searcher

    data, vocab, common = synthetic_store(workdir, n, dim, db)
    rng = np.random.default_rng(3)
    kinds = {
        "one_word": lambda: vocab[rng.integers(len(vocab))],
        "two_words": lambda: f"{vocab[rng.integers(len(vocab))]} {vocab[rng.integers(len(vocab))]}",
        "file_name": lambda: f"IMG_{rng.integers(n):06d}",
        "common_word": lambda: common,
    }
    out: dict = {"items": n, "dim": dim, "index": "flat", "catalog": "postgresql" if db else "sqlite",
                 "rounds": rounds, "kinds": {}}
    with Store.open(data, db=db) as store:
        searcher = Searcher(store, models=None)
        handle = store.collection("synthetic")
        handle.refresh()
        for kind, make in kinds.items():
            a_ms, b_ms, kw_ms = [], [], []
            for r in range(rounds + 3):
                v = rng.standard_normal(dim).astype(np.float32)
                words = make()
                qa = Query(collection="synthetic", vector=v.tolist(), top_k=10)
                qb = Query(collection="synthetic", vector=v.tolist(), keywords=words, top_k=10)
                order = [("a", qa), ("b", qb)] if r % 2 == 0 else [("b", qb), ("a", qa)]
                times = {}
                for name, q in order:
                    t = time.perf_counter()
                    result = searcher.search(q)
                    times[name] = (time.perf_counter() - t) * 1000
                    if name == "b":
                        keyword_ms = result.timing["keyword_ms"]
                if r < 3:  # warm-up
                    continue
                a_ms.append(times["a"])
                b_ms.append(times["b"])
                kw_ms.append(keyword_ms)
            diffs = sorted(b - a for a, b in zip(a_ms, b_ms))
            row = {"vector_only_p50_ms": round(harness.median(a_ms), 3),
                   "hybrid_p50_ms": round(harness.median(b_ms), 3),
                   "overhead_median_ms": round(harness.median(diffs), 3),
                   "overhead_p10_ms": round(diffs[len(diffs) // 10], 3),
                   "overhead_p90_ms": round(diffs[len(diffs) * 9 // 10], 3),
                   "overhead_min_ms": round(diffs[0], 3), "overhead_max_ms": round(diffs[-1], 3),
                   "keyword_stage_p50_ms": round(harness.median(kw_ms), 3),
                   "goal_ms": GOAL_MS, "goal_met": harness.median(diffs) <= GOAL_MS}
            out["kinds"][kind] = row
            print(f"{kind:<12} vector-only p50 {row['vector_only_p50_ms']:.2f} ms, hybrid p50 {row['hybrid_p50_ms']:.2f}"
                  f" ms, overhead median {row['overhead_median_ms']:.2f} ms (p10 {row['overhead_p10_ms']:.2f}, p90 "
                  f"{row['overhead_p90_ms']:.2f}), keyword stage p50 {row['keyword_stage_p50_ms']:.2f} ms"
                  f"  {'goal met' if row['goal_met'] else 'GOAL MISSED'} (<= {GOAL_MS} ms)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=300_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--demo-images", type=int, default=2000)
    p.add_argument("--workdir", default=os.path.join(harness.default_workdir(), "hybrid"))
    p.add_argument("--skip-recall", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--postgres", action="store_true", help="also measure the overhead on a throwaway PostgreSQL "
                   "server (tests/postgres.py: initdb + pg_ctl)")
    p.add_argument("--out", default=str(harness.RESULTS / "hybrid.json"))
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = {"command": "python bench/hybrid.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"cpus": os.cpu_count()}, "rrf_k": 60}
    if not args.skip_recall:
        out["recall"] = recall_part(workdir, args.demo_images)
    if not args.skip_overhead:
        out["overhead"] = overhead_part(workdir, args.items, args.dim, args.rounds)
    if args.postgres:
        from postgres import PostgresServer, find_bin_dir

        server = PostgresServer(find_bin_dir()).start()
        try:
            out["overhead_postgresql"] = overhead_part(workdir, args.items, args.dim, args.rounds,
                                                       db=server.new_database())
        finally:
            server.stop()
    harness.save_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
