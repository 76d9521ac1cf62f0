"""Web benchmark: the search page in a real browser, thumbnail sizes, and the JSON API against gRPC.

    python bench/web.py [--images 2000] [--rounds 5] [--api-requests 200] [--screenshot docs/page.png]

1. Enter -> first 20 thumbnails painted, minus the query's encode time (goal <= 150 ms on the demo collection).
   The demo collection (search/demo: 2,000 synthetic photos, the shipped model) is indexed, and its
   thumbnails written as the ingest path writes them (indexer/thumbnails.py: make_thumbnail of the decoded
   image, write_thumbnail under DATA_DIR/thumbs). `mmsearch serve --http` runs in its own process;
   headless Chromium (tests/browser.py) types a query and presses Enter. The page records, with the
   Performance API, the submit event (t0), the response, and the moment the first 20 <img> elements have
   loaded plus two animation frames (painted). Per query: painted - t0 - the server's encode_ms. Two
   conditions interleaved per query in every round: cold (the browser cache cleared over CDP just before,
   so all 20 thumbnails come from the server) and warm (the same query again: thumbnails from the cache).
   Each query starts when the previous one's thumbnails and next-page fetch are done. The goal is judged on
   cold; median and spread (min, max, p10/p90) over all queries and rounds.
2. Thumbnail bytes per item (goal <= 15 KB): the files written in step 1, over the whole collection; beside
   it, as an upper bound, thumbnails of 640x480 uniform noise (no image compresses worse).
3. HTTP search overhead vs gRPC at concurrency 1 with a tiny model (goal <= 1.5x): the tiny SigLIP of the
   tests, 500 upserted images; one server process serving both transports; per round `--api-requests` text
   searches, each sent over gRPC (search.client.SearchClient), over HTTP with the standard library's
   keep-alive client (http.client: the judged one, since it adds least of its own) and over HTTP with
   requests.Session (reported beside), interleaved request by request (A B C C B A ...); per round the ratio
   of median latencies HTTP / gRPC; the goal on the median ratio over rounds, with its spread.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness  # noqa: F401  (import paths)

import numpy as np

ROOT = harness.REPO
QUERIES = ["a red circle", "a blue square", "a green triangle", "a yellow star", "an orange cross",
           "a purple circle", "a red star", "a blue triangle", "a green square", "a yellow cross"]


def spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max()),
            "p10": float(np.percentile(a, 10)), "p90": float(np.percentile(a, 90)), "n": int(a.size)}


def start_server(args: list[str], log_path: Path) -> tuple[subprocess.Popen, dict]:
    proc, line = harness.serve_cli(args, log_path)
    ports = {"http": None, "grpc": None}
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if m:
        ports["http"] = int(m.group(1))
    m = re.search(r"127\.0\.0\.1:(\d+) \(gRPC\)", line)
    if m:
        ports["grpc"] = int(m.group(1))
    return proc, ports


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- 1 + 2: the page and the thumbnails ------------------------------------------------------------------------

def write_thumbnails(data_dir: Path) -> list[int]:
    """Thumbnails of every item, made and stored as the ingest path does; returns their sizes in bytes."""
    from encoders.preprocess import load_image
    from indexer.store import Store
    from indexer.thumbnails import THUMB_SIZE, make_thumbnail, thumbnail_path, write_thumbnail
    from search.demo.run import COLLECTION

    sizes = []
    with Store.open(data_dir) as store:
        handle = store.collection(COLLECTION)
        ids, _dead, _vecs, _ = next(handle.catalog.all_live(handle.id))
        rows = handle.get([int(i) for i in ids], with_vectors=False)
        for row in rows.values():
            path = thumbnail_path(data_dir, row.sha256)
            if not os.path.exists(path):
                data = Path(row.uri).read_bytes()
                write_thumbnail(data_dir, row.sha256, make_thumbnail(load_image(data, draft_size=(THUMB_SIZE, THUMB_SIZE))))
            sizes.append(os.path.getsize(path))
    return sizes


def worst_case_thumbnails(n: int = 50) -> list[int]:
    """Thumbnail bytes of 640x480 uniform-noise images (incompressible: an upper bound, not a photo)."""
    from images import random_image
    from indexer.thumbnails import make_thumbnail

    return [len(make_thumbnail(random_image(640, 480, seed=i))) for i in range(n)]


def page_rounds(port: int, rounds: int, profile_dir: Path, screenshot: str | None) -> dict:
    from browser import chromium, console_errors
    from search.demo.run import COLLECTION

    base = f"http://127.0.0.1:{port}"
    records = {"cold": [], "warm": []}
    with chromium(profile_dir, width=1400, height=1000) as driver:
        driver.get(f"{base}/?collection={COLLECTION}&q=warm+up")
        wait_painted(driver, 1)

        def quiet() -> None:
            """Until the previous query's last thumbnails and next-page fetch are done (they would compete)."""
            end = time.monotonic() + 30
            while time.monotonic() < end and not driver.execute_script(
                    "return [...document.images].every(i => i.complete) && "
                    "!document.querySelector('#status').textContent.includes('\u2026')"):
                time.sleep(0.02)
            time.sleep(0.3)

        def run(query: str) -> dict:
            quiet()
            n = len(driver.execute_script("return window.mmsearchPerf"))
            box = driver.find_element("id", "q")
            box.clear()
            box.send_keys(query + "\n")
            record = wait_painted(driver, n + 1)
            return {"query": query, "enter_to_painted_ms": record["painted20"] - record["t0"],
                    "enter_to_response_ms": record["tResponse"] - record["t0"], "encode_ms": record["encodeMs"],
                    "server_total_ms": record["totalMs"], "loaded": record["loaded"],
                    "minus_encode_ms": record["painted20"] - record["t0"] - record["encodeMs"]}

        for r in range(rounds):
            for query in QUERIES:
                driver.execute_cdp_cmd("Network.clearBrowserCache", {})
                records["cold"].append({"round": r, **run(query)})  # every thumbnail from the server
                records["warm"].append({"round": r, **run(query + " ")})  # the same hits, from the cache
        errors = console_errors(driver)
        if screenshot:
            driver.set_window_size(1400, 860)
            driver.get(f"{base}/?collection={COLLECTION}&q=two+blue+squares")
            wait_painted(driver, 1)
            time.sleep(0.5)
            driver.save_screenshot(screenshot)
    out = {kind: {"minus_encode_ms": spread([x["minus_encode_ms"] for x in rows]),
                  "enter_to_painted_ms": spread([x["enter_to_painted_ms"] for x in rows]),
                  "enter_to_response_ms": spread([x["enter_to_response_ms"] for x in rows]),
                  "encode_ms": spread([x["encode_ms"] for x in rows]),
                  "server_total_ms": spread([x["server_total_ms"] for x in rows]),
                  "all_loaded": all(x["loaded"] == 20 for x in rows), "samples": rows}
           for kind, rows in records.items()}
    out["console_errors"] = errors
    return out


def wait_painted(driver, count: int, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        perf = driver.execute_script("return window.mmsearchPerf || []")
        if len(perf) >= count and perf[count - 1].get("painted20") is not None:
            return perf[count - 1]
        time.sleep(0.01)
    raise RuntimeError(f"the page did not paint 20 thumbnails within {timeout}s")


# -- 3: HTTP vs gRPC -------------------------------------------------------------------------------------------

def api_rounds(workdir: Path, rounds: int, n: int) -> dict:
    import requests

    from search.client import SearchClient
    from search_helpers import png_bytes
    from tiny_checkpoints import make_tiny_siglip

    model = workdir / "tiny-siglip"
    if not (model / "config.json").exists():
        make_tiny_siglip(model)
    data = workdir / "api-data"
    proc, ports = start_server(["--address", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir", str(data),
                                "--preload", str(model), "--workers", "4"], workdir / "api-server.log")
    try:
        with SearchClient(f"127.0.0.1:{ports['grpc']}", timeout=30) as client:
            if "bench" not in [c.name for c in client.list_collections()]:
                client.create_collection("bench", model=str(model))
                client.upsert("bench", [{"image": png_bytes(i, 32 + i % 9, 30), "uri": f"i{i}.png"} for i in range(500)])
            session = requests.Session()
            conn = http.client.HTTPConnection("127.0.0.1", ports["http"])
            path = "/api/v1/collections/bench/search"
            texts = [f"query number {i} about shapes" for i in range(n)]

            def via_grpc(text):
                return client.search("bench", text=text, top_k=10).timing.encode_ms

            def via_http(text):  # the standard library's client, keep-alive: the server's share, mostly
                conn.request("POST", path, body=json.dumps({"text": text, "top_k": 10}),
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(body[:300])
                return json.loads(body)["timing"]["encode_ms"]

            def via_requests(text):  # what most scripts use: a slower client, reported beside
                r = session.post(f"http://127.0.0.1:{ports['http']}{path}", json={"text": text, "top_k": 10})
                r.raise_for_status()
                return r.json()["timing"]["encode_ms"]

            calls = {"grpc": via_grpc, "http": via_http, "http_requests": via_requests}
            for text in texts[:20]:  # warm every path
                for fn in calls.values():
                    fn(text)
            per_round = []
            for r in range(rounds):
                total = {name: [] for name in calls}
                beyond = {name: [] for name in calls}
                for i, text in enumerate(texts):  # A B C, then C B A, ...: interleaved request by request
                    for name in (list(calls) if i % 2 == 0 else list(calls)[::-1]):
                        t = time.perf_counter()
                        encode_ms = calls[name](f"{text} {r}")
                        ms = (time.perf_counter() - t) * 1000
                        total[name].append(ms)
                        beyond[name].append(ms - encode_ms)
                lat = {name: {"p50_ms": statistics.median(total[name]),
                              "p50_beyond_encode_ms": statistics.median(beyond[name])} for name in calls}
                per_round.append({"round": r, **lat, "ratio": lat["http"]["p50_ms"] / lat["grpc"]["p50_ms"],
                                  "ratio_requests": lat["http_requests"]["p50_ms"] / lat["grpc"]["p50_ms"]})
    finally:
        stop_server(proc)
    ratios = [x["ratio"] for x in per_round]
    return {"model": "tests/tiny_checkpoints.make_tiny_siglip (dim 32)", "requests_per_round": n,
            "rounds": per_round, "ratio": spread(ratios),
            "ratio_requests": spread([x["ratio_requests"] for x in per_round]),
            "http_requests_p50_ms": spread([x["http_requests"]["p50_ms"] for x in per_round]),
            "grpc_p50_ms": spread([x["grpc"]["p50_ms"] for x in per_round]),
            "http_p50_ms": spread([x["http"]["p50_ms"] for x in per_round]),
            "grpc_beyond_encode_ms": spread([x["grpc"]["p50_beyond_encode_ms"] for x in per_round]),
            "http_beyond_encode_ms": spread([x["http"]["p50_beyond_encode_ms"] for x in per_round])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/web.py", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--api-rounds", type=int, default=8)
    parser.add_argument("--api-requests", type=int, default=200)
    parser.add_argument("--workdir", default=os.path.join(harness.default_workdir(), "web"))
    parser.add_argument("--screenshot", help="also save a screenshot of the page here (docs/page.png)")
    parser.add_argument("--out", default=str(harness.RESULTS / "web.json"))
    args = parser.parse_args(argv)

    from search.demo import run as demo

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / f"demo-{args.images}"
    t = time.perf_counter()
    demo.build_collection(data, args.images, workers=1)
    sizes = write_thumbnails(data)
    print(f"demo collection of {args.images} indexed, {len(sizes)} thumbnails in {time.perf_counter() - t:.0f}s")

    proc, ports = start_server(["--address", "", "--http", "127.0.0.1:0", "--data-dir", str(data), "--preload",
                                str(demo.MODEL_DIR), "--image-root", str(data / demo.PHOTOS)],
                               workdir / "page-server.log")
    try:
        page = page_rounds(ports["http"], args.rounds, workdir, args.screenshot)
    finally:
        stop_server(proc)
    api = api_rounds(workdir, args.api_rounds, args.api_requests)

    thumbs = {"items": len(sizes), "mean_bytes": float(np.mean(sizes)), **{k: float(v) for k, v in (
        ("median_bytes", np.median(sizes)), ("p95_bytes", np.percentile(sizes, 95)), ("max_bytes", max(sizes)))}}
    noise = worst_case_thumbnails()
    thumbs["worst_case_noise_640x480"] = {"items": len(noise), "mean_bytes": float(np.mean(noise)),
                                          "max_bytes": float(max(noise))}
    goals = {
        "enter_to_20_painted_minus_encode_ms_cold": {"value": page["cold"]["minus_encode_ms"]["median"], "goal": 150,
                                                     "met": page["cold"]["minus_encode_ms"]["median"] <= 150},
        "thumbnail_kb_per_item": {"value": thumbs["mean_bytes"] / 1024, "goal": 15,
                                  "met": thumbs["mean_bytes"] / 1024 <= 15},
        "http_over_grpc_c1": {"value": api["ratio"]["median"], "goal": 1.5, "met": api["ratio"]["median"] <= 1.5},
    }
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "settings": {"images": args.images, "rounds": args.rounds, "queries": QUERIES, "viewport": [1400, 1000],
                           "page_size": 40, "api_rounds": args.api_rounds, "api_requests": args.api_requests},
              "page": page, "thumbnails": thumbs, "http_vs_grpc": api, "goals": goals,
              "command": "python bench/web.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n{'measure':52s} {'median':>9s} {'p10':>8s} {'p90':>8s} {'min':>8s} {'max':>8s}")
    rows = [("Enter -> 20 painted - encode, cold cache (ms)", page["cold"]["minus_encode_ms"]),
            ("Enter -> 20 painted - encode, warm cache (ms)", page["warm"]["minus_encode_ms"]),
            ("Enter -> response, cold (ms)", page["cold"]["enter_to_response_ms"]),
            ("server total per query (ms)", page["cold"]["server_total_ms"]),
            ("HTTP / gRPC p50 latency, c=1, tiny model", api["ratio"]),
            ("HTTP (requests) / gRPC p50 latency", api["ratio_requests"]),
            ("gRPC p50 (ms)", api["grpc_p50_ms"]), ("HTTP p50 (ms)", api["http_p50_ms"]),
            ("HTTP (requests) p50 (ms)", api["http_requests_p50_ms"]),
            ("gRPC p50 beyond encode (ms)", api["grpc_beyond_encode_ms"]),
            ("HTTP p50 beyond encode (ms)", api["http_beyond_encode_ms"])]
    for name, s in rows:
        print(f"{name:52s} {s['median']:9.2f} {s['p10']:8.2f} {s['p90']:8.2f} {s['min']:8.2f} {s['max']:8.2f}")
    print(f"thumbnails: {thumbs['items']} items, mean {thumbs['mean_bytes'] / 1024:.1f} KB, "
          f"p95 {thumbs['p95_bytes'] / 1024:.1f} KB, max {thumbs['max_bytes'] / 1024:.1f} KB; uniform noise "
          f"640x480 (upper bound): mean {np.mean(noise) / 1024:.1f} KB")
    for name, g in goals.items():
        print(f"goal {name}: {g['value']:.2f} (goal <= {g['goal']}) {'met' if g['met'] else 'MISSED'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
