"""The catalog's write ceiling (issue 14 b): rows/s committed into PostgreSQL by 1, 4 and 16 concurrent writer
processes, through the bulk job's own commit (indexer/jobs.py `commit_batch`: `Catalog.write` + `write_rows`,
i.e. COPY of items, item_vectors and the metadata index rows in one transaction per `--commit-every` rows).

    python bench/pg_writes.py [--rows 25600] [--rounds 5] [--commit-every 256] [--against CHECKOUT]

`--against` (another checkout of the project, e.g. `git archive` of the commit before a change): every trial
runs for both, each into its own database (its tables as its own code makes them), the order turning every
trial, and each writer count gets ours / against per round (harness.paired).

A throwaway PostgreSQL (tests/postgres.py: Debian's binaries, loopback) with PostgreSQL's default durability
(fsync and synchronous_commit on; `--no-fsync` for the test suite's settings). Rows are 768-d float32 vectors
with a uri, sha256, size and five metadata keys (two strings, three numbers), built before the clock starts;
every writer process opens its own Store and commits its share of `--rows` into one collection. The
writer counts are interleaved in time (1 4 16, 4 16 1, ...; `--rounds` rounds, each on a fresh collection),
and each count's figure is the median over rounds with its min/max. Goal: >= 20,000 rows/s.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import sys
import tempfile
import time

import numpy as np

import harness
from harness import load_average, median, paired, save_json

GOAL = 20_000
DIM = 768


def make_rows(writer: int, count: int, trial: str):
    from indexer.store import UpsertRow

    rng = np.random.default_rng(writer)
    vecs = rng.standard_normal((count, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cameras = ["canon", "nikon", "sony", "fuji"]
    return [UpsertRow(uri=f"s3://bucket/{trial}/w{writer}/img_{i:07d}.jpg", sha256=f"{trial}{writer:03d}{i:020d}".ljust(64, "0"),
                      width=4000, height=3000, vector=vecs[i],
                      meta={"camera": cameras[i % 4], "album": f"album-{i % 97}", "iso": 100 * (1 + i % 32),
                            "exposure": 1 / (1 + i % 500), "year": 2000 + i % 25})
            for i in range(count)]


def writer(url: str, data_dir: str, collection: str, index: int, count: int, commit_every: int, trial: str,
           ready, results) -> None:
    from indexer.store import Store

    rows = make_rows(index, count, trial)
    with Store.open(data_dir, db=url) as store:
        handle = store.collection(collection)
        catalog = handle.catalog
        with catalog.session():  # the connection is open before the clock starts
            pass
        ready.wait()
        start = time.perf_counter()
        commits = []
        for at in range(0, count, commit_every):
            t = time.perf_counter()
            with catalog.write(handle.id) as (s, rev):  # the bulk job's transaction (indexer/jobs.py _commit)
                handle.write_rows(s, rev, rows[at:at + commit_every], replace_uri=False)
            commits.append(time.perf_counter() - t)
        results.put({"start": start, "end": time.perf_counter(), "rows": count, "commit_s": commits})


def create(url: str, data_dir: str, name: str) -> None:
    from indexer.store import Store

    with Store.open(data_dir, db=url) as store:
        store.catalog.create_collection(name, encoder_name="bench", encoder_family="siglip", encoder_digest="0" * 64,
                                        dim=DIM, index_spec="flat")


@contextlib.contextmanager
def code_path(code: str | None):
    """Processes spawned inside import the project from `code` (another checkout), else from this one."""
    saved = list(sys.path)
    if code is not None:
        sys.path.insert(0, code)
    try:
        yield
    finally:
        sys.path[:] = saved


def trial(url: str, data_dir: str, writers: int, rows: int, commit_every: int, name: str,
          code: str | None = None) -> dict:
    ctx = mp.get_context("spawn")
    with code_path(code):  # the collection too: a catalog's table settings are part of what is compared
        setup = ctx.Process(target=create, args=(url, data_dir, name))
        setup.start()
        setup.join(timeout=300)
        if setup.exitcode != 0:
            raise RuntimeError(f"creating the collection failed (exit {setup.exitcode})")
        ready, results = ctx.Barrier(writers + 1), ctx.Queue()
        share = rows // writers
        procs = [ctx.Process(target=writer, args=(url, data_dir, name, i, share, commit_every, name, ready, results))
                 for i in range(writers)]
        for p in procs:
            p.start()
    ready.wait(timeout=300)
    out = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"a writer failed (exit {p.exitcode})")
    wall = max(r["end"] for r in out) - min(r["start"] for r in out)
    commits = sorted(c for r in out for c in r["commit_s"])
    from sqlalchemy import create_engine, text

    engine = create_engine(url)  # plain SQL: opening a Catalog of this checkout would change the other's tables
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT live_count FROM collections WHERE name = :n"), {"n": name}).scalar()
    engine.dispose()
    if stored != share * writers:
        raise RuntimeError(f"{stored} rows stored, {share * writers} written")
    return {"writers": writers, "rows": share * writers, "seconds": round(wall, 3),
            "rows_per_s": round(share * writers / wall), "commits": len(commits),
            "commit_ms_p50": round(1000 * commits[len(commits) // 2], 1),
            "commit_ms_p99": round(1000 * commits[int(len(commits) * 0.99)], 1)}


def profile(url: str, data_dir: str, rows: int, commit_every: int) -> dict:
    """Where one writer's commit time goes: each bulk COPY (by table), the text index insert, the uri/sha
    probe, id allocation, metadata keys, and the COMMIT itself (its WAL flush), as shares of the wall time."""
    import collections

    import indexer.catalog as catalog_module
    from indexer.store import Store

    spent: dict[str, float] = collections.defaultdict(float)

    def timed(name, fn):
        def run(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name(*a) if callable(name) else name] += time.perf_counter() - t
        return run

    saved = {n: getattr(catalog_module.Catalog, n) for n in ("existing_shas", "_new_item_ids", "_key_ids")}
    insert_rows, insert_text = catalog_module._insert_rows, catalog_module.text_index.insert
    catalog_module._insert_rows = timed(lambda conn, dialect, table, *_: f"COPY {table}", insert_rows)
    catalog_module.text_index.insert = timed("INSERT item_text", insert_text)
    for n, fn in saved.items():
        setattr(catalog_module.Catalog, n, timed(n, fn))
    try:
        with Store.open(data_dir, db=url) as store:
            store.catalog.create_collection("profile", encoder_name="bench", encoder_family="siglip",
                                            encoder_digest="0" * 64, dim=DIM, index_spec="flat")
            handle, catalog = store.collection("profile"), store.catalog
            batch = make_rows(0, rows, "profile")
            start = time.perf_counter()
            for at in range(0, rows, commit_every):
                with catalog.write(handle.id) as (s, rev):
                    handle.write_rows(s, rev, batch[at:at + commit_every], replace_uri=False)
                    t = time.perf_counter()
                spent["COMMIT"] += time.perf_counter() - t
            wall = time.perf_counter() - start
    finally:
        catalog_module._insert_rows, catalog_module.text_index.insert = insert_rows, insert_text
        for n, fn in saved.items():
            setattr(catalog_module.Catalog, n, fn)
    shares = {k: round(v / wall, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    shares["rest (Python, revision bump, live count)"] = round(1 - sum(shares.values()), 3)
    return {"rows": rows, "rows_per_s": round(rows / wall), "share_of_wall_time": shares}


def probe_comparison(url: str, data_dir: str, rounds: int, commit_every: int) -> dict:
    """The write path's sha probe for one commit's rows against 50k stored items: `= ANY(array)` (what
    Catalog.existing_shas sends on PostgreSQL) vs an IN list of one parameter per value (what it sent before),
    interleaved (harness.compare), 20 probes per call."""
    from sqlalchemy import select

    from harness import compare
    from indexer.catalog import Item
    from indexer.store import Store

    with Store.open(data_dir, db=url) as store:
        store.catalog.create_collection("probe", encoder_name="bench", encoder_family="siglip",
                                        encoder_digest="0" * 64, dim=DIM, index_spec="flat")
        handle, catalog = store.collection("probe"), store.catalog
        stored = make_rows(0, 50_000, "probe")
        for at in range(0, len(stored), 2000):
            with catalog.write(handle.id) as (s, rev):
                handle.write_rows(s, rev, stored[at:at + 2000], replace_uri=False)
        shas = [r.sha256 for r in make_rows(1, commit_every, "probe")]
        live = catalog.live(handle.id)
        with catalog.session() as s:
            def probe(condition):
                return lambda: [s.execute(select(Item.id, Item.sha256).where(live, condition)).all() for _ in range(20)]
            out = compare({"any_array": probe(catalog._among(Item.sha256, shas)),
                           "in_list": probe(Item.sha256.in_(shas))}, 20, rounds, [("any_array", "in_list")])
    return {"values_per_probe": commit_every, "stored_items": len(stored),
            "ms_per_probe": {k: round(1000 / v, 2) for k, v in out["rates"].items()},
            "in_list_over_any_array": out["ratios"]["any_array/in_list"], "seconds_per_20": out["seconds"],
            "loadavg_before": out["loadavg_before"], "loadavg_after": out["loadavg_after"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25_600, help="rows per trial, split among the writers")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--commit-every", type=int, default=256, help="rows per transaction (the job's default)")
    parser.add_argument("--no-fsync", action="store_true", help="the test suite's settings: fsync and "
                                                                "synchronous_commit off")
    parser.add_argument("--probe", action="store_true", help="only compare the sha probe's two SQL forms "
                                                             "(writes bench/results/pg_probe.json)")
    parser.add_argument("--out", default=None, help="default bench/results/pg_writes.json (pg_probe.json with --probe)")
    parser.add_argument("--against", metavar="CHECKOUT", help="another checkout of the project (e.g. the commit "
                        "before a change): every trial runs for both, interleaved, each into its own database")
    args = parser.parse_args()
    args.out = args.out or str(harness.RESULTS / ("pg_probe.json" if args.probe else "pg_writes.json"))

    from postgres import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("PostgreSQL binaries not found (apt-get install postgresql)", file=sys.stderr)
        return 2
    server = PostgresServer(bin_dir, durable=not args.no_fsync).start()
    data_dir = tempfile.mkdtemp(prefix="mmsearch-pgw-")
    trials: list[dict] = []
    before = load_average()
    try:
        url = server.new_database()
        if args.probe:
            result = probe_comparison(url, data_dir, args.rounds, args.commit_every)
            print(result, flush=True)
            save_json(args.out, {"settings": {"durable": not args.no_fsync, "rounds": args.rounds}, "probe": result})
            return 0
        # each implementation writes into a database of its own (its tables as its code makes them)
        urls = {"ours": url, **({"against": server.new_database()} if args.against else {})}
        codes = {"ours": None, "against": args.against}
        for r in range(args.rounds):
            counts = args.writers[r % len(args.writers):] + args.writers[:r % len(args.writers)]
            for n in counts:
                for code in (list(urls) if (r + counts.index(n)) % 2 == 0 else list(urls)[::-1]):
                    t = trial(urls[code], data_dir, n, args.rows, args.commit_every, f"r{r}w{n}", codes[code])
                    t.update(round=r, code=code, loadavg=load_average())
                    trials.append(t)
                    print(t, flush=True)
        prof = profile(url, data_dir, min(args.rows, 5120), args.commit_every)
        print("one writer, where the time goes:", prof, flush=True)
    finally:
        server.stop()
    summary, against = {}, {}
    for n in args.writers:
        mine = [t for t in trials if t["writers"] == n and t["code"] == "ours"]
        rates = [t["rows_per_s"] for t in mine]
        summary[str(n)] = {"rows_per_s_median": round(median(rates)), "min": min(rates), "max": max(rates),
                           "rounds": len(rates), "goal": GOAL, "met": median(rates) >= GOAL}
        print(f"{n:3d} writers: {median(rates):8.0f} rows/s  [{min(rates)}-{max(rates)}]  "
              f"{'met' if median(rates) >= GOAL else 'MISSED'} (goal {GOAL})")
        if args.against:
            theirs = [t for t in trials if t["writers"] == n and t["code"] == "against"]
            other = [t["rows_per_s"] for t in theirs]
            # per round: ours rows/s over theirs (same rows, so their seconds the other way round)
            ratio = paired([t["seconds"] for t in mine], [t["seconds"] for t in theirs])
            against[str(n)] = {"rows_per_s_median": round(median(other)), "min": min(other), "max": max(other),
                               "ours_over_against": ratio}
            print(f"     against {args.against}: {median(other):8.0f} rows/s  [{min(other)}-{max(other)}]; "
                  f"ours/against {ratio['median']} ({ratio['min']}-{ratio['max']})")
    save_json(args.out, {"settings": {"rows_per_trial": args.rows, "commit_every": args.commit_every, "dim": DIM,
                                      "meta_keys": 5, "durable": not args.no_fsync, "rounds": args.rounds,
                                      "postgres": bin_dir},
                         "machine": {"cpus": __import__("os").cpu_count(), "loadavg_before": before},
                         "summary": summary, **({"against": {"code": args.against, "summary": against}}
                                                if args.against else {}),
                         "profile_one_writer": prof, "trials": trials})
    return 0


if __name__ == "__main__":
    sys.exit(main())
