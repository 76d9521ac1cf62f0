"""`mmsearch demo`: the main job end to end, offline, with a model whose results can be checked.

1. write a synthetic photo collection (search/demo/shapes.py) with its ground truth,
2. index it with the normal bulk indexer (indexer.jobs) into the data dir's SQLite catalog + FAISS,
3. start the gRPC server (search.server) on a free loopback port,
4. send the demo's text queries, and two query-by-example images the collection does not hold, through the
   Python client (search.client); print the top results with scores,
5. score recall@10 against the ground truth, then stop the server; with `web` (HOST:PORT) the server also
   serves the search page there and stays up, printing the page's URL, until Ctrl-C / SIGTERM.

recall@10 of a query = |relevant ∩ top 10| / min(10, |relevant|), where an image is relevant when its
label has every attribute the query names (shapes.Query.relevant); the means are over queries.
The model is search/demo/model (trained by `python -m search.demo.train`), loaded by encoders.load.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from . import shapes

MODEL_DIR = Path(__file__).with_name("model")
COLLECTION = "demo-shapes"
PHOTOS = "demo-photos"
EXAMPLE_START = 900_000  # query-by-example images: DEMO_SPACE indices far from the collection's
EXAMPLES = ((EXAMPLE_START, "colour+shape"), (EXAMPLE_START + 1, "colour+shape"))


@dataclass
class QueryResult:
    text: str
    kind: str
    relevant: int
    recall: float
    hits: list[tuple[float, str, shapes.Label | None]]  # (score, file name, its true label)


@dataclass
class DemoResult:
    queries: list[QueryResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def mean(self, kind: str | None = None, *, by_example: bool | None = None) -> float:
        rows = [q for q in self.queries if (kind is None or q.kind == kind)
                and (by_example is None or q.text.startswith("image:") == by_example)]
        return sum(q.recall for q in rows) / len(rows) if rows else float("nan")


def example_query(index: int) -> tuple[bytes, shapes.Query]:
    """A fresh image (never indexed, never trained on) and the query it stands for: same colour and shape."""
    label = shapes.label_for(shapes.DEMO_SPACE, index)
    data = shapes.encode_file(shapes.render(label, shapes.DEMO_SPACE, index), label)
    noun = label.shape if label.count == 1 else shapes.PLURALS[label.shape]
    text = f"image: {label.count} {label.colour} {noun} on {label.background}"
    return data, shapes.Query(text, "colour+shape", label.shape, label.colour)


def build_collection(data_dir: str | os.PathLike, n_images: int, *, workers: int | None = 0,
                     model_dir: str | os.PathLike = MODEL_DIR, say=lambda message: None) -> Path:
    """The demo collection without the rest of the demo (tests, bench/web.py): write `n_images` photos under
    DATA_DIR/demo-photos and index them into collection COLLECTION; returns the manifest (ground truth)."""
    data_dir = Path(data_dir).absolute()
    manifest = shapes.write_collection(data_dir / PHOTOS, n_images)
    _index(data_dir, manifest, n_images, Path(model_dir).absolute(), workers=workers, progress=False, say=say)
    return manifest


def _index(data_dir: Path, manifest: Path, n_images: int, model_dir: Path, *, workers: int | None, progress: bool, say) -> None:
    import encoders
    from mmsearch.errors import Conflict
    from indexer.jobs import JobOptions, index_paths
    from indexer.store import Store

    enc = encoders.load(model_dir)
    with Store.open(data_dir) as store:
        existing = store.catalog.find_collection(COLLECTION)
        if existing is not None:
            try:
                coll = store.collection(COLLECTION)
                coll.check_encoder(enc)
                stale = coll.count() > n_images
            except Conflict:
                stale = True
            if stale:  # built by another model version or from a bigger collection: start over
                say(f"dropping the old {COLLECTION!r} collection (other model or size)")
                store.drop_collection(COLLECTION)
        options = JobOptions(progress=progress)
        if workers is not None:
            options.workers = workers
        result = index_paths(store, COLLECTION, enc, [str(manifest)], options)
    say(f"indexed: {result.added} added, {result.skipped} already there, {result.failed} errors "
        f"in {result.elapsed_s:.1f}s")


def run_demo(data_dir: str | os.PathLike, *, n_images: int = 2000, k: int = 10, show: int = 5,
             workers: int | None = None, progress: bool = True, model_dir: str | os.PathLike = MODEL_DIR,
             out=print, web: str | None = None, on_page=None) -> DemoResult:
    """`web`: HOST:PORT for the search page, kept up after the queries until SIGTERM / SIGINT, or until
    `on_page(url)` returns when it is given (tests)."""
    from search.client import SearchClient
    from search.config import ServerConfig
    from search.grpc_api import struct_to_dict
    from search.server import page_url, start

    data_dir = Path(data_dir).absolute()
    model_dir = Path(model_dir).absolute()
    result = DemoResult()
    t_start = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        result.timings[name] = round(now - since, 2)
        return now

    out(f"[1/5] writing {n_images} synthetic photos with ground truth to {data_dir / PHOTOS}")
    manifest = shapes.write_collection(data_dir / PHOTOS, n_images)
    labels = shapes.read_labels(manifest)
    t = lap("generate", t_start)

    out(f"[2/5] indexing them with {model_dir} into {data_dir}")
    _index(data_dir, manifest, n_images, model_dir, workers=workers, progress=progress, say=lambda m: out("      " + m))
    t = lap("index", t)

    server = start(ServerConfig(address="127.0.0.1:0", http=web or "", data_dir=str(data_dir),
                                preload=[str(model_dir)], image_roots=[str(data_dir / PHOTOS)], drain_seconds=5.0))
    try:
        out(f"[3/5] gRPC server listening on 127.0.0.1:{server.port}"
            + (f"; the search page on {page_url(web, server.http_port)}" if web else ""))
        t = lap("server_start", t)
        out(f"[4/5] querying through the Python client (top {k}; showing {show}; ✓ = matches the query)")
        with SearchClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            if client.health() != "SERVING":
                raise RuntimeError("the demo server is not serving")
            requests = [(q, {"text": q.text}) for q in shapes.QUERIES]
            for index, _ in EXAMPLES:
                data, query = example_query(index)
                requests.append((query, {"image": data}))
            for query, what in requests:
                relevant = sum(query.relevant(label) for label in labels.values())
                if relevant == 0:
                    out(f"  {query.text!r}: no relevant image in a collection this small; skipped")
                    continue
                response = client.search(COLLECTION, top_k=k, include_metadata=True, **what)
                names = [Path(h.uri).name for h in response.hits]
                hits = [(h.score, name, labels.get(name)) for h, name in zip(response.hits, names)]
                recall = shapes.recall_at_k(names, query, labels, k)
                result.queries.append(QueryResult(query.text, query.kind, relevant, recall, hits))
                out(f"  {query.text!r}  recall@{k} {recall:.2f}  ({relevant} relevant)")
                for rank, (score, name, label) in enumerate(hits[:show], 1):
                    mark = "✓" if label is not None and query.relevant(label) else "✗"
                    desc = label.describe() if label else f"unknown ({struct_to_dict(response.hits[rank - 1].metadata)})"
                    out(f"      {rank:2d}. {score:+.4f}  {mark} {name}  {desc}")
        t = lap("queries", t)
        if not web:
            server.stop(grace=5.0, health_grace=0)
            out("[5/5] server stopped")
            lap("server_stop", t)
        result.timings["total"] = round(time.perf_counter() - t_start, 2)
        _summary(result, k, out)
        if web:
            url = page_url(web, server.http_port) + "?" + urlencode({"collection": COLLECTION,
                                                                     "q": shapes.QUERIES[0].text})
            out(f"\n[5/5] the search page: {url}\n      try a colour and a shape in any words, drop an image, "
                f"or 'More like this'; Ctrl-C stops the server")
            sys.stdout.flush()
            if on_page is not None:
                on_page(url)
            else:
                _serve_until_signal()
    finally:
        server.stop(grace=5.0, health_grace=0)  # no-op when already stopped
    return result


def _summary(result: DemoResult, k: int, out) -> None:
    by_kind = defaultdict(list)
    for q in result.queries:
        by_kind["image example" if q.text.startswith("image:") else q.kind].append(q)
    out(f"\nrecall@{k} = |relevant ∩ top {k}| / min({k}, |relevant|), mean over queries")
    for kind, rows in by_kind.items():
        out(f"  {kind:14s} {sum(q.recall for q in rows) / len(rows):.3f}  ({len(rows)} queries)")
    out(f"  {'all':14s} {result.mean():.3f}  ({len(result.queries)} queries)")
    out("time: " + ", ".join(f"{name} {secs:.1f}s" for name, secs in result.timings.items()))


def _serve_until_signal() -> None:
    import signal

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m search.demo.run")
    parser.add_argument("--data-dir", default="./mmsearch-data")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--web", nargs="?", const="127.0.0.1:8080", metavar="HOST:PORT")
    args = parser.parse_args(argv)
    run_demo(args.data_dir, n_images=args.images, progress=sys.stderr.isatty(), web=args.web)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
