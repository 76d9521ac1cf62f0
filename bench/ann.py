"""ANN benchmark: exact vs IVF vs HNSW (our indexer.ann.VectorIndex) on 200k x 768 L2-normalised vectors.

    python bench/ann.py [--n 200000] [--dim 768] [--queries 1000] [--no-random] [--out bench/results/ann.json]
    python bench/ann.py --kinds flat,ivf,ivfsq8,ivfsq16,ivfpq,hnswsq8 --n 100000 --out bench/results/ann_kinds.json

`--kinds`: every kind at the shipped defaults (and an nprobe / ef curve): build time, payload bytes, cold
open (memory-mapped vs read into memory), recall@10 and single-query q/s. Compressed kinds re-rank their
shortlist against the float vectors through `vector_source`, here an in-memory array (the store reads
them from the catalog by primary key, which this does not time).

Data: a Gaussian mixture resembling real embeddings (100 broad clusters around a shared direction, points
about cos 0.6 from their centre, anisotropic power-law noise; queries drawn from the same mixture), and i.i.d. Gaussian vectors for reference (no structure: the worst
case for any ANN index). Reported per index: build time, single-query QPS (one call per query), batched
QPS (all queries in one call), recall@10 against exact search, swept over nprobe / efSearch.
Goal on clustered data: recall@10 >= 0.95 at >= 10x the exact single-query QPS.
Filtered search at 1% selectivity (2000 allowed ids): must return a full top-10 identical to brute force.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import harness  # noqa: E402  (import paths; save_json)

ROOT = harness.REPO

from indexer.ann import IndexSpec, VectorIndex  # noqa: E402

K = 10


def mixture_model(dim: int, *, clusters: int = 100, spread: float = 1.33, seed: int = 0) -> dict:
    """A Gaussian mixture shaped like image embeddings: every centre shares a common direction (random
    images are not orthogonal), clusters are broad (2000 points each at 200k) and the noise is anisotropic
    with a power-law spectrum, so neighbourhoods straddle k-means cells and nprobe / ef matter."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    own = rng.standard_normal((clusters, dim)).astype(np.float32)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    centers = 0.6 * common + 0.8 * own
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = np.arange(1, dim + 1, dtype=np.float64) ** -0.5
    scales *= spread / np.sqrt((scales ** 2).sum())  # expected noise norm = spread -> cos(x, centre) ~ 0.6
    return {"centers": centers, "basis": basis.astype(np.float32), "scales": scales.astype(np.float32)}


def mixture(model: dict, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, model["centers"].shape[1]), dtype=np.float32)
    for start in range(0, n, 20_000):
        m = min(20_000, n - start)
        noise = (rng.standard_normal((m, x.shape[1])).astype(np.float32) * model["scales"]) @ model["basis"].T
        x[start:start + m] = model["centers"][rng.integers(0, len(model["centers"]), m)] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def gaussian(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(spec: str, x: np.ndarray, ids: np.ndarray) -> tuple[VectorIndex, float]:
    t0 = time.perf_counter()
    s = IndexSpec.parse(spec).resolve(len(x), x.shape[1])
    training = None
    if VectorIndex.kinds[s.kind].trained:  # the same sample size the Store trains on
        want = min(len(x), max((s.param or 0) * 64, 20_000))
        training = x[np.random.default_rng(1).choice(len(x), want, replace=False)]
    index = VectorIndex.empty(s, x.shape[1], training, n_hint=len(x))
    pos = {int(i): n for n, i in enumerate(ids)}
    index.vector_source = lambda want: (want, x[[pos[int(i)] for i in want]])
    for start in range(0, len(x), 50_000):
        index.add(ids[start:start + 50_000], x[start:start + 50_000])
    return index, time.perf_counter() - t0


def measure(index: VectorIndex, q: np.ndarray, truth: np.ndarray, single: int, **params) -> dict:
    t0 = time.perf_counter()
    for row in q[:single]:
        index.search(row[None, :], K, **params)
    single_qps = single / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    _, found = index.search(q, K, **params)
    batch_qps = len(q) / (time.perf_counter() - t0)
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))
    return {"single_qps": round(single_qps, 1), "batch_qps": round(batch_qps, 1), "recall_at_10": round(recall, 4)}


def filtered_check(index: VectorIndex, x: np.ndarray, ids: np.ndarray, q: np.ndarray, selectivity: float) -> dict:
    rng = np.random.default_rng(7)
    allowed = np.sort(rng.choice(ids, int(len(ids) * selectivity), replace=False))
    sims = q @ x[np.searchsorted(ids, allowed)].T
    want = allowed[np.argsort(-sims, axis=1, kind="stable")[:, :K]]
    t0 = time.perf_counter()
    got = np.stack([index.search(row[None, :], K, allowed=allowed)[1][0] for row in q])
    qps = len(q) / (time.perf_counter() - t0)
    return {"allowed": int(len(allowed)), "full_top_k": bool((got >= 0).all()),
            "identical_to_brute_force": bool(np.array_equal(got, want)), "single_qps": round(qps, 1)}


def run_dataset(name: str, x: np.ndarray, q: np.ndarray, single: int, sweep: bool) -> dict:
    ids = np.arange(1, len(x) + 1, dtype=np.int64) * 3  # item ids, not positions
    out: dict = {}
    flat, secs = build("flat", x, ids)
    _, truth = flat.search(q, K)
    out["exact"] = {"spec": str(flat.spec), "build_s": round(secs, 2), **measure(flat, q, truth, single)}
    exact_qps = out["exact"]["single_qps"]
    print(f"[{name}] exact: {out['exact']}", flush=True)
    if sweep:
        out["exact"]["filtered_1pct"] = filtered_check(flat, x, ids, q[:100], 0.01)
    del flat

    ivf, secs = build("ivf", x, ids)
    nlist = ivf.index.nlist
    rows = []
    for nprobe in ([4, 8, 16, 32, 48, 64, 96, 128] if sweep else [16, 32, 64]):
        r = {"nprobe": nprobe, **measure(ivf, q, truth, single, nprobe=nprobe)}
        r["speedup_single"] = round(r["single_qps"] / exact_qps, 1)
        rows.append(r)
        print(f"[{name}] ivf{nlist}: {r}", flush=True)
    out["ivf"] = {"spec": str(ivf.spec), "nlist": nlist, "default_nprobe": int(ivf.index.nprobe),
                  "build_s": round(secs, 2), "sweep": rows}
    if sweep:
        out["ivf"]["filtered_1pct"] = filtered_check(ivf, x, ids, q[:100], 0.01)
    del ivf

    hnsw, secs = build("hnsw", x, ids)
    rows = []
    for ef in ([16, 32, 64, 128, 256] if sweep else [32, 64, 128]):
        r = {"ef": ef, **measure(hnsw, q, truth, single, ef=ef)}
        r["speedup_single"] = round(r["single_qps"] / exact_qps, 1)
        rows.append(r)
        print(f"[{name}] hnsw: {r}", flush=True)
    out["hnsw"] = {"spec": str(hnsw.spec), "build_s": round(secs, 2), "sweep": rows}
    if sweep:
        out["hnsw"]["filtered_1pct"] = filtered_check(hnsw, x, ids, q[:100], 0.01)
    for kind in ("ivf", "hnsw"):
        ok = [r for r in out[kind]["sweep"] if r["recall_at_10"] >= 0.95]
        best = max(ok, key=lambda r: r["single_qps"]) if ok else None
        out[kind]["best_at_recall_0.95"] = best
        out[kind]["goal_met"] = bool(best and best["speedup_single"] >= 10)
    return out


def run_kinds(kinds: list[str], x: np.ndarray, q: np.ndarray, single: int, folder: Path) -> dict:
    """Each kind at its defaults and along a short curve; persisted and reopened both ways."""
    ids = np.arange(1, len(x) + 1, dtype=np.int64) * 3
    truth = None
    out: dict = {}
    for kind in kinds:
        index, secs = build(kind, x, ids)
        if truth is None:
            truth = build("flat", x, ids)[0].search(q, K)[1] if kind != "flat" else index.search(q, K)[1]
        path = str(folder / f"{kind}.faiss")
        index.save(path, {})
        payload = folder / VectorIndex.read_header(path)["payload"]
        opens = {}
        for mode in ("mmap", "read"):
            t0 = time.perf_counter()
            VectorIndex.load(path, mmap=mode == "mmap")
            opens[f"open_{mode}_s"] = round(time.perf_counter() - t0, 3)
        row = {"spec": str(index.spec), "build_s": round(secs, 2), "payload_bytes": payload.stat().st_size,
               "bytes_per_vector": round(payload.stat().st_size / len(x), 1), **opens,
               "refine": index.refine, "defaults": measure(index, q, truth, single)}
        if kind.startswith("ivf"):
            row["default_nprobe"] = int(index.ivf.nprobe)
            row["curve"] = [{"nprobe": p, **measure(index, q, truth, single, nprobe=p)} for p in (8, 16, 32, 64)]
        elif kind.startswith("hnsw"):
            row["default_ef"] = int(index.hnsw.efSearch)
            row["curve"] = [{"ef": e, **measure(index, q, truth, single, ef=e)} for e in (32, 128, 256)]
        out[kind] = row
        print(f"{kind}: {row}", flush=True)
        for f in (path, payload):
            os.unlink(f)
        del index
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", help="comma-separated kinds to run at their defaults instead of the ivf/hnsw sweep")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=300, help="queries timed one call at a time")
    ap.add_argument("--no-random", action="store_true")
    ap.add_argument("--reuse-random", metavar="JSON", help="copy the random-data section of an earlier run "
                    "(marked as such) instead of measuring it again")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ann.json"))
    args = ap.parse_args()
    import faiss

    load_before = os.getloadavg()
    model = mixture_model(args.dim)
    x = mixture(model, args.n, seed=1)
    q = mixture(model, args.queries, seed=2)
    if args.kinds:
        import tempfile

        from harness import save_json

        with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
            kinds = run_kinds(args.kinds.split(","), x, q, args.single, Path(folder))
        save_json(args.out, {"command": " ".join(["python", *sys.argv]), "n": args.n, "dim": args.dim,
                             "queries": args.queries, "k": K, "faiss": faiss.__version__, "kinds": kinds,
                             "loadavg": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()})
        return
    sample = x[np.random.default_rng(3).choice(args.n, 2000, replace=False)]
    pair_cos = float(np.mean((sample[:1000] * sample[1000:]).sum(1)))
    result = {"n": args.n, "dim": args.dim, "queries": args.queries, "k": K,
              "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(),
              "clustered_data": {"clusters": len(model["centers"]), "mean_cos_random_pair": round(pair_cos, 3)},
              "clustered": run_dataset("clustered", x, q, args.single, sweep=True)}
    del x, q
    if args.reuse_random:
        earlier = json.loads(Path(args.reuse_random).read_text())
        result["random"] = dict(earlier["random"], note="copied from an earlier run of this script")
    elif not args.no_random:
        x = gaussian(args.n, args.dim, seed=2)
        q = gaussian(args.queries, args.dim, seed=3)
        result["random"] = run_dataset("random", x, q, args.single, sweep=False)
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_before": [round(v, 2) for v in load_before],
                         "loadavg_after": [round(v, 2) for v in os.getloadavg()]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    harness.save_json(args.out, result)
    c = result["clustered"]
    print(f"\nclustered, exact single-query {c['exact']['single_qps']} q/s")
    for kind in ("ivf", "hnsw"):
        print(f"  {kind}: best at recall>=0.95: {c[kind]['best_at_recall_0.95']}  goal met: {c[kind]['goal_met']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
