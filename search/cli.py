"""The `mmsearch` command.

Each subcommand is a `cmd_<name>(args) -> int` function registered in `build_parser`. User errors
(`encoders.errors.MMSearchError`) end the command with one line on stderr and the error's exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from encoders.errors import MMSearchError


def default_data_dir() -> str:
    return os.environ.get("MMSEARCH_DATA", "./mmsearch-data")


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    import encoders
    from encoders.preprocess import load_image

    if not args.text and not args.image:
        raise encoders.errors.InvalidInput("embed: give at least one --text or --image")
    enc = encoders.load(args.model, device=args.device, dtype=args.dtype)
    rows: list[tuple[str, str, np.ndarray]] = []
    if args.text:
        for text, vec in zip(args.text, enc.encode_texts(args.text)):
            rows.append(("text", text, vec))
    if args.image:
        images = [load_image(path) for path in args.image]
        for path, vec in zip(args.image, enc.encode_images(images)):
            rows.append(("image", path, vec))
    if args.json:
        out = {"model": enc.name, "family": enc.family, "dim": enc.dim,
               "vectors": [{"kind": k, "input": s, "vector": [round(float(x), 7) for x in v]} for k, s, v in rows]}
        print(json.dumps(out, ensure_ascii=False))
    else:
        for kind, source, vec in rows:
            head = " ".join(f"{x:+.4f}" for x in vec[:8])
            print(f"{kind}\t{source}\tdim={vec.shape[0]}\t[{head} ...]")
    return 0


def _open_store(args: argparse.Namespace):
    from indexer.store import Store

    return Store(args.data_dir, db=args.db)


def cmd_index(args: argparse.Namespace) -> int:
    import encoders
    from indexer.jobs import JobOptions, index_paths

    options = JobOptions(workers=args.workers, batch_size=args.batch_size, commit_every=args.commit_every,
                         update=args.update, max_pixels=args.max_pixels or None,
                         progress=not args.no_progress and sys.stderr.isatty())
    if args.workers is None:
        options.workers = JobOptions().workers
    options.check()
    with _open_store(args) as store:
        if args.model:
            enc = encoders.load(args.model, device=args.device, dtype=args.dtype)
        elif store.catalog.find_collection(args.collection) is not None:
            enc = store.encoder_for(args.collection, device=args.device)
        else:
            raise encoders.errors.InvalidInput(f"index: collection {args.collection!r} is new: give --model")
        captioner = encoders.load_captioner(args.caption, device=args.device) if args.caption else None
        result = index_paths(store, args.collection, enc, args.paths, options, captioner=captioner,
                             index_spec=args.index)
    print(f"job {result.job_id}: {result.added} added, {result.updated} updated, {result.skipped} skipped, "
          f"{result.failed} errors in {result.elapsed_s:.1f}s ({result.rate:.1f} images/s)"
          + (f"; see `mmsearch jobs --job {result.job_id}`" if result.failed else ""))
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    import time

    with _open_store(args) as store:
        coll = store.collection(args.collection)
        t0 = time.perf_counter()
        index = coll.rebuild(args.index)
        print(f"rebuilt {coll.name}: {index.spec} index, {index.ntotal} items, "
              f"catalog revision {index.watermark}, {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from encoders.errors import InvalidInput
    from indexer.catalog import Item
    from search.filters import compile_filter

    if not (args.id or args.uri or args.filter):
        raise InvalidInput("delete: give --id, --uri or --filter")
    with _open_store(args) as store:
        coll = store.collection(args.collection)
        where = compile_filter(args.filter, Item, store.catalog.dialect) if args.filter else None
        # items from folders are stored under absolute paths; a uri given by the API is taken as written
        uris = sorted({form for u in args.uri for form in (u, os.path.abspath(u))}) if args.uri else None
        n = coll.delete(ids=args.id or None, uris=uris, where=where)
        print(f"deleted {n} item{'s' if n != 1 else ''} from {coll.name}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        catalog = store.catalog
        names = {c.id: c.name for c in catalog.list_collections()}
        cid = catalog.get_collection(args.collection).id if args.collection else None
        for coll_id in ([cid] if cid is not None else list(names)):
            catalog.mark_stale_jobs(coll_id)
        jobs = [catalog.get_job(args.job)] if args.job is not None else catalog.list_jobs(cid, limit=args.limit)
        rows = []
        for job in jobs:
            show = args.errors or (None if args.job is not None else 0)
            errors = catalog.job_errors(job.id, limit=show) if show != 0 else []
            rows.append({"id": job.id, "collection": names.get(job.collection_id), "state": job.state,
                         "sources": job.sources, "seen": job.seen, "added": job.added,
                         "updated": job.updated_count, "skipped": job.skipped, "failed": job.failed,
                         "started": job.started.isoformat(timespec="seconds") + "Z",
                         "finished": job.finished.isoformat(timespec="seconds") + "Z" if job.finished else None,
                         "resumed_from": job.resumed_from, "message": job.message,
                         "errors": [{"uri": e.uri, "reason": e.reason} for e in errors]})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    print("job\tcollection\tstate\tadded\tupdated\tskipped\terrors\tstarted\tsources")
    for r in rows:
        print(f"{r['id']}\t{r['collection']}\t{r['state']}\t{r['added']}\t{r['updated']}\t{r['skipped']}\t"
              f"{r['failed']}\t{r['started']}\t{' '.join(r['sources'])}")
        if r["message"]:
            print(f"\t{r['message']}")
        for e in r["errors"]:
            print(f"\terror\t{e['uri']}\t{e['reason']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch", description="Multimodal embedding search and retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="print embedding vectors for texts and images")
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    p.add_argument("--image", action="append", default=[], help="an image file to embed (repeatable)")
    p.add_argument("--json", action="store_true", help="print full vectors as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16 (CUDA)")
    p.set_defaults(func=cmd_embed)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=default_data_dir(), help="data directory (default $MMSEARCH_DATA "
                       "or ./mmsearch-data)")
        p.add_argument("--db", default=None, help="catalog SQLAlchemy URL (default $MMSEARCH_DB or SQLite in "
                       "the data dir)")

    p = sub.add_parser("index", help="index folders, image files and CSV/JSONL manifests into a collection")
    p.add_argument("paths", nargs="+", metavar="PATH_OR_MANIFEST")
    p.add_argument("--collection", required=True)
    p.add_argument("--model", help="encoder checkpoint (needed when the collection is new)")
    p.add_argument("--caption", metavar="MODEL", help="also store a caption per item from this captioner")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: cores - 1; 0: in-process)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call")
    p.add_argument("--commit-every", type=int, default=256, help="items per catalog transaction")
    p.add_argument("--update", action="store_true", help="re-embed known files whose content changed")
    p.add_argument("--max-pixels", type=int, default=100_000_000, help="refuse larger images (0: no limit)")
    p.add_argument("--index", metavar="SPEC", help="index kind for a new collection: auto|flat|ivf[N]|hnsw[M]")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    data_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("rebuild", help="rebuild a collection's FAISS index from the catalog")
    p.add_argument("--collection", required=True)
    p.add_argument("--index", metavar="SPEC", help="switch index kind: auto|flat|ivf[N]|hnsw[M]")
    data_args(p)
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("delete", help="delete items by id, uri or metadata filter")
    p.add_argument("--collection", required=True)
    p.add_argument("--id", type=int, action="append", default=[], help="item id (repeatable)")
    p.add_argument("--uri", action="append", default=[], help="item uri or file path (repeatable)")
    p.add_argument("--filter", help="filter expression, e.g. 'meta.split = \"test\"'")
    data_args(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("jobs", help="list indexing jobs and their errors")
    p.add_argument("--collection")
    p.add_argument("--job", type=int, help="one job, with all its errors")
    p.add_argument("--errors", type=int, default=0, metavar="N", help="show up to N errors per job")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    data_args(p)
    p.set_defaults(func=cmd_jobs)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MMSearchError as exc:
        print(f"mmsearch {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"mmsearch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
