"""The `mmsearch` command.

Each subcommand is a `cmd_<name>(args) -> int` function registered in `build_parser`. User errors
(`MMSearchError`) end the command with one line on stderr and the error's exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mmsearch.errors import InvalidInput, MMSearchError


DTYPE_CHOICES = ("float32", "bfloat16", "float16")
EXACT_DECODE_HELP = "decode JPEGs in full (transformers' pixels exactly) instead of the faster draft mode"
INDEX_MEMORY_HELP = ("memory budget for an index (e.g. 4GB, 512MB): `auto` picks flat, ivf, ivfsq8 or ivfpq "
                     "to fit it (default 4GiB)")


def default_data_dir() -> str:
    return os.environ.get("MMSEARCH_DATA", "./mmsearch-data")


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    import encoders
    from encoders.preprocess import load_image

    if not args.text and not args.image:
        raise InvalidInput("embed: give at least one --text or --image")
    enc = encoders.load(args.model, device=args.device, dtype=args.dtype, exact_decode=args.exact_decode)
    rows: list[tuple[str, str, np.ndarray]] = []
    if args.text:
        for text, vec in zip(args.text, enc.encode_texts(args.text)):
            rows.append(("text", text, vec))
    if args.image:
        images = [load_image(path, draft_size=enc.image_preprocessor.draft_size) for path in args.image]
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

    return Store(args.data_dir, db=args.db, index_memory=getattr(args, "index_memory", None))


def cmd_index(args: argparse.Namespace) -> int:
    import encoders
    from indexer.jobs import JobOptions, index_paths

    options = JobOptions(workers=args.workers, batch_size=args.batch_size, commit_every=args.commit_every,
                         update=args.update, max_pixels=args.max_pixels or None,
                         progress=not args.no_progress and sys.stderr.isatty())
    if args.workers is None:
        options.workers = JobOptions().workers
    if args.max_bytes is not None:
        options.max_bytes = args.max_bytes
    options.check()
    engine = _ray_options(args)
    with _open_store(args) as store:
        if args.model:
            enc = encoders.load(args.model, device=args.device, dtype=args.dtype)
        elif store.catalog.find_collection(args.collection) is not None:
            enc = store.encoder_for(args.collection, device=args.device)
        else:
            raise InvalidInput(f"index: collection {args.collection!r} is new: give --model")
        if args.exact_decode:
            enc.image_preprocessor.exact_decode = True
        captioner = (encoders.load_captioner(args.caption, device=args.device, dtype=args.dtype)
                     if args.caption else None)
        text_fields = None if args.text_fields is None else [f for f in args.text_fields.split(",") if f.strip()]
        result = index_paths(store, args.collection, enc, args.paths, options, captioner=captioner,
                             index_spec=args.index, engine=engine, text_fields=text_fields)
        _keep_index_memory(store, args)
    _print_job(result, f"{result.rate:.1f} images/s")
    return 0


def _keep_index_memory(store, args: argparse.Namespace) -> None:
    if args.index_memory:  # the collection keeps its budget: a server re-chooses under it too
        store.collection(args.collection).set_index_memory(args.index_memory)


def _print_job(result, rate: str) -> None:
    print(f"job {result.job_id}: {result.added} added, {result.updated} updated, {result.skipped} skipped, "
          f"{result.failed} errors in {result.elapsed_s:.1f}s ({rate})"
          + (f"; see `mmsearch jobs --job {result.job_id}`" if result.failed else ""))


def _ray_options(args: argparse.Namespace):
    """RayOptions for `--engine ray` (None for the local engine); a token file given here is where Ray reads
    the head's token from."""
    gpus = getattr(args, "gpus_per_actor", None)  # index only
    if args.engine != "ray":
        if args.ray_address or args.actors is not None or gpus is not None or args.ray_token_file:
            raise InvalidInput("--ray-address, --ray-token-file, --actors" + (" and --gpus-per-actor" if gpus else "")
                               + " go with --engine ray")
        return None
    from indexer.ray_job import RayOptions, import_ray, use_token

    if args.ray_token_file:
        if not os.path.isfile(args.ray_token_file):
            raise InvalidInput(f"--ray-token-file {args.ray_token_file}: no such file")
        os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.abspath(args.ray_token_file)
    if args.ray_address:
        use_token(args.ray_address)
    import_ray(data=args.command == "index")  # without Ray: the one-line hint, before any model is loaded
    options = RayOptions(address=args.ray_address or None, actors=1 if args.actors is None else args.actors,
                         gpus_per_actor=gpus or 0.0)
    options.check()
    return options


def cmd_import(args: argparse.Namespace) -> int:
    import encoders
    from indexer.jobs import ImportOptions, import_embeddings

    options = ImportOptions(batch_size=args.batch, update=args.update, vector_column=args.vector_column,
                            manifest=args.manifest, progress=not args.no_progress and sys.stderr.isatty())
    options.check()
    engine = _ray_options(args)
    with _open_store(args) as store:
        if args.model:
            enc = encoders.load(args.model, device="cpu")
        elif store.catalog.find_collection(args.collection) is not None:
            enc = store.encoder_for(args.collection)
        else:
            raise InvalidInput(f"import: collection {args.collection!r} is new: give --model (the encoder the "
                               "vectors were made with; text queries use it)")
        result = import_embeddings(store, args.collection, enc, args.paths, options, index_spec=args.index,
                                   engine=engine)
        _keep_index_memory(store, args)
    _print_job(result, f"{result.rate:,.0f} rows/s, then the index in {result.index_s:.1f}s")
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


def cmd_migrate(args: argparse.Namespace) -> int:
    from indexer.catalog import SCHEMA_VERSION, Catalog, database_url
    from indexer.catalog_upgrade import vacuum

    catalog = Catalog(database_url(args.data_dir, args.db), create=False)
    try:
        if catalog.upgraded_from is None:
            print(f"catalog {catalog.where}: schema version {SCHEMA_VERSION}, nothing to upgrade")
        else:
            print(f"catalog {catalog.where}: upgraded from schema version {catalog.upgraded_from} to {SCHEMA_VERSION}")
        if args.vacuum:
            before, after = vacuum(catalog)
            print(f"vacuumed: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    finally:
        catalog.close()
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
            kind = (job.options or {}).get("kind", "index")
            show = args.errors or (None if args.job is not None else 0)
            errors = catalog.job_errors(job.id, limit=show) if show != 0 else []
            rows.append({"id": job.id, "kind": kind, "collection": names.get(job.collection_id), "state": job.state,
                         "sources": job.sources, "seen": job.seen, "added": job.added,
                         "updated": job.updated_count, "skipped": job.skipped, "failed": job.failed,
                         "started": job.started.isoformat(timespec="seconds") + "Z",
                         "finished": job.finished.isoformat(timespec="seconds") + "Z" if job.finished else None,
                         "resumed_from": job.resumed_from, "message": job.message,
                         "engine": (job.options or {}).get("engine", "local"),
                         "errors": [{"uri": e.uri, "reason": e.reason} for e in errors]})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    print("job\tkind\tcollection\tstate\tadded\tupdated\tskipped\terrors\tstarted\tsources")
    for r in rows:
        print(f"{r['id']}\t{r['kind']}\t{r['collection']}\t{r['state']}\t{r['added']}\t{r['updated']}\t{r['skipped']}\t"
              f"{r['failed']}\t{r['started']}\t{' '.join(r['sources'])}")
        if r["message"]:
            print(f"\t{r['message']}")
        for e in r["errors"]:
            print(f"\terror\t{e['uri']}\t{e['reason']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from search.config import ServerConfig
    from search.server import serve

    token = args.token or os.environ.get("MMSEARCH_TOKEN") or None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    address = "" if args.no_grpc else args.address
    overrides = dict(address=address, http=args.http, data_dir=args.data_dir, db=args.db, token=token, tls_cert=args.tls_cert,
                     tls_key=args.tls_key, workers=args.workers, max_message_mb=args.max_message_mb,
                     batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms, device=args.device,
                     dtype=args.dtype, batching=False if args.no_batching else None,
                     default_deadline_s=args.default_deadline, health_grace_s=args.health_grace,
                     allow_models=args.allow_model or None, preload=args.preload or None,
                     image_roots=args.image_root or None, shard=args.shard, media_dir=args.media_dir,
                     index_memory=args.index_memory,
                     shards=[a for a in (args.shards or "").split(",") if a] or None)
    if args.config:
        config = ServerConfig.from_file(args.config, **overrides)
    else:
        config = ServerConfig(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(config)


def _query_via_server(args: argparse.Namespace, image: bytes | None) -> dict:
    import grpc

    from mmsearch.errors import error_for_status
    from search.client import SearchClient

    token = args.token or os.environ.get("MMSEARCH_TOKEN") or None
    roots = None
    if args.ca:
        with open(args.ca, "rb") as fh:
            roots = fh.read()
    try:
        with SearchClient(args.server, token=token, tls=args.tls, root_certificates=roots, timeout=args.timeout) as client:
            r = client.search(args.collection, text=args.text, image=image, top_k=args.k, filter=args.filter or "",
                              rerank_model=args.rerank or "", rerank_depth=args.depth, include_metadata=True,
                              include_caption=True, min_score=args.min_score,
                              min_rerank_probability=args.min_rerank_probability, keywords=args.keywords or "")
    except grpc.RpcError as exc:
        raise error_for_status(exc.code().name)(f"{exc.code().name}: {exc.details()}") from None
    from search.grpc_api import struct_to_dict

    def optional(h, name):
        return getattr(h, name) if h.HasField(name) else None

    hits = [{"id": h.id, "score": h.score, "rerank_score": optional(h, "rerank_score"),
             "vector_score": optional(h, "vector_score"), "keyword_score": optional(h, "keyword_score"),
             "uri": h.uri, "caption": h.caption, "metadata": struct_to_dict(h.metadata)} for h in r.hits]
    timing = {k: round(getattr(r.timing, k), 3) for k in ("encode_ms", "filter_ms", "ann_ms", "keyword_ms", "fetch_ms",
                                                           "rerank_ms", "caption_ms", "total_ms")}
    return {"hits": hits, "timing": timing, "filter_strategy": r.filter_strategy, "score_kind": r.score_kind}


def _query_local(args: argparse.Namespace, image: bytes | None) -> dict:
    from search.models import Models
    from search.pipeline import Query, Searcher

    models = Models(batching=False, device=args.device, dtype=args.dtype)
    with _open_store(args) as store:
        result = Searcher(store, models).search(Query(
            collection=args.collection, text=args.text, image=image, top_k=args.k, filter=args.filter or "",
            rerank_model=args.rerank or "", rerank_depth=args.depth, include_metadata=True, include_caption=True,
            min_score=args.min_score, min_rerank_probability=args.min_rerank_probability,
            keywords=args.keywords or ""))
    hits = [{"id": h.id, "score": h.score, "rerank_score": h.rerank_score, "vector_score": h.vector_score,
             "keyword_score": h.keyword_score, "uri": h.uri, "caption": h.caption or "", "metadata": h.metadata or {}}
            for h in result.hits]
    return {"hits": hits, "timing": {k: round(v, 3) for k, v in result.timing.items()},
            "filter_strategy": result.filter_strategy, "score_kind": result.score_kind}


_SCORE_HEADER = {"vector": "score", "keyword": "keyword_score", "rrf": "rrf_score"}


def cmd_query(args: argparse.Namespace) -> int:

    if args.text is not None and args.image is not None:
        raise InvalidInput("query: give either TEXT or --image FILE, not both")
    if args.text is None and args.image is None and not (args.keywords or "").strip():
        raise InvalidInput("query: give TEXT, --image FILE or --keywords WORDS")
    image = None
    if args.image:
        try:
            with open(args.image, "rb") as fh:
                image = fh.read()
        except OSError as exc:
            raise InvalidInput(f"query: cannot read {args.image}: {exc.strerror or exc}") from None
    out = _query_via_server(args, image) if args.server else _query_local(args, image)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    reranked = any(h["rerank_score"] is not None for h in out["hits"])
    print(f"rank\tid\t{_SCORE_HEADER.get(out['score_kind'], 'score')}" + ("\trerank" if reranked else "")
          + "\turi\tcaption\tmetadata")
    for rank, h in enumerate(out["hits"], 1):
        rr = "" if h["rerank_score"] is None else f"{h['rerank_score']:.4f}"
        print(f"{rank}\t{h['id']}\t{h['score']:.4f}" + (f"\t{rr}" if reranked else "")
              + f"\t{h['uri']}\t{h['caption']}\t{json.dumps(h['metadata'], ensure_ascii=False) if h['metadata'] else ''}")
    t = out["timing"]
    print(f"{len(out['hits'])} hits in {t['total_ms']:.1f} ms (encode {t['encode_ms']:.1f}, filter {t['filter_ms']:.1f}, "
          f"ann {t['ann_ms']:.1f}, keywords {t['keyword_ms']:.1f}, rerank {t['rerank_ms']:.1f}; "
          f"filter strategy {out['filter_strategy']})",
          file=sys.stderr)
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    import time

    images = []
    for path in args.image:
        try:
            with open(path, "rb") as fh:
                images.append(fh.read())
        except OSError as exc:
            raise InvalidInput(f"ask: cannot read {path}: {exc.strerror or exc}") from None
    if not images and not args.id:
        raise InvalidInput("ask: give --image FILE or --collection C --id N")
    settings = dict(model=args.model, question=args.question, images=images, collection=args.collection or "",
                    item_ids=args.id, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    if args.server:
        import grpc

        from mmsearch.errors import error_for_status
        from search.client import SearchClient

        token = args.token or os.environ.get("MMSEARCH_TOKEN") or None
        try:
            with SearchClient(args.server, token=token, tls=args.tls, timeout=args.timeout) as client:
                answers = client.ask(**settings)
        except grpc.RpcError as exc:
            raise error_for_status(exc.code().name)(f"{exc.code().name}: {exc.details()}") from None
    else:
        from search.config import ServerConfig
        from search.models import Models
        from search.service import Service

        models = Models(batching=False, device=args.device, dtype=args.dtype)
        with _open_store(args) as store:
            service = Service(store, models, ServerConfig(data_dir=store.data_dir), local=True)
            answers = service.ask(**settings, deadline=time.monotonic() + args.timeout)
    labels = args.image + [f"item {i}" for i in args.id]
    if args.json:
        print(json.dumps([{"input": label, "answer": answer} for label, answer in zip(labels, answers)],
                         ensure_ascii=False))
    else:
        for label, answer in zip(labels, answers):
            print(f"{label}\t{answer}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from search.demo.run import run_demo

    if not 20 <= args.images <= 100_000:
        raise InvalidInput(f"demo: --images must be 20..100000, got {args.images}")
    run_demo(args.data_dir, n_images=args.images, workers=args.workers, show=max(0, args.show),
             progress=sys.stderr.isatty(), web=args.web)
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
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="float32 (default), bfloat16, float16 (CUDA)")
    p.add_argument("--exact-decode", action="store_true", help=EXACT_DECODE_HELP)
    p.set_defaults(func=cmd_embed)

    def ray_args(p: argparse.ArgumentParser, shared: str) -> None:
        p.add_argument("--ray-address", metavar="HOST:PORT", help="the Ray head (default: start a local Ray); "
                       f"{shared}; needs --db PostgreSQL")
        p.add_argument("--ray-token-file", metavar="FILE", help="the head's auth token (default "
                       "$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray get-auth-token` on the head prints it)")

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=default_data_dir(), help="data directory (default $MMSEARCH_DATA "
                       "or ./mmsearch-data)")
        p.add_argument("--db", default=None, help="catalog SQLAlchemy URL (default $MMSEARCH_DB or SQLite in "
                       "the data dir)")

    p = sub.add_parser("index", help="index folders, image files and CSV/JSONL manifests into a collection")
    p.add_argument("paths", nargs="+", metavar="PATH_OR_MANIFEST",
                   help="folders, image files, CSV/JSONL manifests; http(s):// / s3:// uris are read through fsspec "
                   '(pip install -e ".[remote]" / ".[s3]")')
    p.add_argument("--collection", required=True)
    p.add_argument("--model", help="encoder checkpoint (needed when the collection is new)")
    p.add_argument("--caption", metavar="MODEL", help="also store a caption per item from this captioner")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: cores - 1; 0: in-process)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call")
    p.add_argument("--commit-every", type=int, default=256, help="items per catalog transaction")
    p.add_argument("--update", action="store_true", help="re-embed known files whose content changed")
    p.add_argument("--max-pixels", type=int, default=100_000_000, help="refuse larger images (0: no limit)")
    p.add_argument("--max-bytes", type=int, default=None, metavar="N",
                   help="refuse larger files, local or remote (default 256 MiB)")
    p.add_argument("--index", metavar="SPEC", help="index kind for a new collection: auto|flat|ivf[N]|ivfsq8|"
                   "ivfsq16|ivfpq|hnsw[M]|hnswsq8 (see README, Index kinds)")
    p.add_argument("--index-memory", metavar="SIZE", help=INDEX_MEMORY_HELP + "; kept by the collection")
    p.add_argument("--text-fields", metavar="F1,F2", default=None,
                   help="metadata fields the keyword index holds beside captions and file names (e.g. title,tags); "
                   "given for an existing collection, they replace its fields and its text index is rewritten")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="encoder and captioner weights")
    p.add_argument("--exact-decode", action="store_true", help=EXACT_DECODE_HELP)
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: decode processes here; ray: decode tasks and encoder actors on a Ray cluster "
                        '(pip install -e ".[ray]"), commits from here')
    ray_args(p, "inputs and the model must be at the same paths on every node")
    p.add_argument("--actors", type=int, default=None, help="encoder actors on the cluster (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=None, metavar="G",
                   help="GPUs per encoder actor (default 0: CPU)")
    data_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("import", help="import precomputed embeddings with metadata: clip-retrieval output "
                       "(img_emb/ + metadata/), parquet (uri, vector, metadata columns), .npy + manifest")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--collection", required=True)
    p.add_argument("--model", help="the encoder the vectors were made with (needed when the collection is new; "
                   "its dim must match, text queries use it)")
    p.add_argument("--batch", type=int, default=50_000, metavar="N",
                   help="rows per catalog transaction")
    p.add_argument("--update", action="store_true", help="replace items whose uri is already in the collection "
                   "(default: skip them, so a rerun resumes)")
    p.add_argument("--vector-column", metavar="NAME", help="parquet: the vector column, when there are several")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: read here; ray: read and prepare the files on a Ray cluster (pip install -e "
                        '".[ray]"), commits from here')
    ray_args(p, "the inputs must be at the same paths on every node")
    p.add_argument("--actors", type=int, default=None, help="read tasks running at once on the cluster "
                   "(default 1)")
    p.add_argument("--manifest", metavar="FILE", help=".npy: its JSONL / CSV manifest (default: FILE.jsonl, "
                   ".ndjson or .csv beside it)")
    p.add_argument("--index", metavar="SPEC", help="index kind for a new collection: auto|flat|ivf[N]|ivfsq8|"
                   "ivfsq16|ivfpq|hnsw[M]|hnswsq8 (see README, Index kinds)")
    p.add_argument("--index-memory", metavar="SIZE", help=INDEX_MEMORY_HELP + "; kept by the collection")
    p.add_argument("--no-progress", action="store_true")
    data_args(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("rebuild", help="rebuild a collection's FAISS index from the catalog")
    p.add_argument("--collection", required=True)
    p.add_argument("--index", metavar="SPEC", help="switch index kind: auto|flat|ivf[N]|ivfsq8|ivfsq16|ivfpq|"
                   "hnsw[M]|hnswsq8")
    data_args(p)
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("delete", help="delete items by id, uri or metadata filter")
    p.add_argument("--collection", required=True)
    p.add_argument("--id", type=int, action="append", default=[], help="item id (repeatable)")
    p.add_argument("--uri", action="append", default=[], help="item uri or file path (repeatable)")
    p.add_argument("--filter", help="filter expression, e.g. 'meta.split = \"test\"'")
    data_args(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("migrate", help="upgrade a catalog written by an older mmsearch in place (opening it "
                       "does the same); --vacuum then compacts a SQLite file")
    p.add_argument("--vacuum", action="store_true", help="rewrite the SQLite file compactly afterwards (needs free "
                   "disk about its size and no other process using it)")
    data_args(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("jobs", help="list indexing jobs and their errors")
    p.add_argument("--collection")
    p.add_argument("--job", type=int, help="one job, with all its errors")
    p.add_argument("--errors", type=int, default=0, metavar="N", help="show up to N errors per job")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    data_args(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("serve", help="run the search server: gRPC, and with --http the page and JSON API "
                       "(SIGTERM drains in-flight calls and exits)")
    p.add_argument("--address", default=None, help="gRPC HOST:PORT (default 127.0.0.1:50051; port 0 picks one; "
                   "'' = no gRPC)")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="also serve the search page, the JSON API (/api/v1, docs at /docs) and /metrics here")
    p.add_argument("--no-grpc", action="store_true", help="serve HTTP only (same as --address '')")
    p.add_argument("--data-dir", default=None, help="data directory (default $MMSEARCH_DATA or ./mmsearch-data)")
    p.add_argument("--db", default=None, help="catalog SQLAlchemy URL (default $MMSEARCH_DB or SQLite in the data dir)")
    p.add_argument("--config", help="TOML file with ServerConfig keys (flags given here win)")
    p.add_argument("--token", help="require 'authorization: Bearer TOKEN' metadata (also $MMSEARCH_TOKEN)")
    p.add_argument("--token-file", help="read the bearer token from this file")
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: serve TLS)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--workers", type=int, default=None, help="RPC thread pool size (default 16)")
    p.add_argument("--max-message-mb", type=float, default=None, help="largest request/response (default 64)")
    p.add_argument("--batch-max", type=int, default=None, help="largest encoder batch (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=None, help="longest wait to fill a batch (default 2)")
    p.add_argument("--no-batching", action="store_true", help="call the encoder once per request")
    p.add_argument("--allow-model", action="append", default=[], metavar="MODEL",
                   help="a model requests may name (rerank, caption, embed, new collections); repeatable")
    p.add_argument("--preload", action="append", default=[], metavar="MODEL",
                   help="a dual encoder to load at start (also allowed); repeatable")
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="a folder whose files the server may read (Upsert by path, rerank/captions); repeatable")
    p.add_argument("--media-dir", metavar="DIR", help="copies of uploads and thumbnails (default: the data dir); "
                   "replicas and shards of one catalog share one")
    p.add_argument("--index-memory", metavar="SIZE", help=INDEX_MEMORY_HELP + " (TOML index_memory)")
    p.add_argument("--shard", metavar="I/N", help="serve shard I of N: the indices hold items with id %% N == I")
    p.add_argument("--shards", metavar="ADDR,ADDR,...",
                   help="gRPC addresses of all N shards in order; a Search sent here fans out over them")
    p.add_argument("--default-deadline", type=float, default=None, metavar="S",
                   help="deadline for calls that carry none (default 120 s)")
    p.add_argument("--health-grace", type=float, default=None, metavar="S",
                   help="on SIGTERM, report NOT_SERVING this long before refusing calls (default 2 s)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                   help="model weights: float32 (default), bfloat16 (2-3x faster on AVX-512 CPUs), float16 (CUDA)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("query", help="search a collection, through a server (--server) or in a data directory")
    p.add_argument("text", nargs="?", default=None, metavar="TEXT")
    p.add_argument("--image", metavar="FILE", help="query by image instead of text")
    p.add_argument("--keywords", metavar="WORDS", help="words that must all appear in a hit's caption, file name or "
                   "text fields: alone, the keyword matches; with TEXT / --image, fused with the vector search "
                   "(reciprocal rank fusion)")
    p.add_argument("--collection", required=True)
    p.add_argument("-k", "--top-k", dest="k", type=int, default=10)
    p.add_argument("--filter", help="filter expression, e.g. 'width >= 512 AND meta.license IN (\"cc0\")'")
    p.add_argument("--rerank", metavar="MODEL", help="rerank with this BLIP / BLIP-2 ITM checkpoint")
    p.add_argument("--depth", type=int, default=0, help="candidates to rerank (default 128, at most 256)")
    p.add_argument("--min-score", type=float, default=None, help="drop hits whose first-stage score is below this")
    p.add_argument("--min-rerank-probability", type=float, default=None, metavar="P",
                   help="with --rerank: drop hits whose ITM probability is below P (0..1)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--server", metavar="HOST:PORT[,HOST:PORT...]",
                   help="ask a running server (or replicas, round robin; or dns:///NAME:PORT) instead of the data dir")
    p.add_argument("--token", help="bearer token for --server (also $MMSEARCH_TOKEN)")
    p.add_argument("--tls", action="store_true", help="connect to --server over TLS")
    p.add_argument("--ca", help="PEM root certificate(s) for --tls")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (with --server)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="model weights (without --server)")
    data_args(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("ask", help="answer a question about images or items (BLIP VQA, BLIP-2)")
    p.add_argument("question")
    p.add_argument("--model", required=True, help="BLIP VQA or BLIP-2 checkpoint")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image file (repeatable)")
    p.add_argument("--collection", help="the collection of --id items")
    p.add_argument("--id", type=int, action="append", default=[], help="an item id (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument("--server", metavar="HOST:PORT", help="ask a running server instead of loading the model here")
    p.add_argument("--token", help="bearer token for --server (also $MMSEARCH_TOKEN)")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES)
    data_args(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("demo", help="the main job offline: synthetic photos -> index -> gRPC server -> queries, "
                       "scored against ground truth")
    p.add_argument("--data-dir", default=default_data_dir(), help="data directory (default $MMSEARCH_DATA "
                   "or ./mmsearch-data)")
    p.add_argument("--images", type=int, default=2000, help="size of the synthetic collection (default 2000)")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: cores - 1; 0: in-process)")
    p.add_argument("--show", type=int, default=5, help="results printed per query (default 5)")
    p.add_argument("--web", nargs="?", const="127.0.0.1:8080", default=None, metavar="HOST:PORT",
                   help="then keep the search page up on the demo collection (default 127.0.0.1:8080) until Ctrl-C")
    p.set_defaults(func=cmd_demo)

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
