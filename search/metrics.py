"""Prometheus metrics for one server process, both transports alike (served at GET /metrics, no token).

    metrics = Metrics()                                   # a registry of its own: servers in one process never mix
    models = Models(..., on_batch=metrics.observe_batch)  # search/batching.py calls it after each encoder batch
    service.on_search = metrics.observe_search            # per-stage latency from SearchResult.timing
    metrics.observe_request("grpc", "Search", None, 0.012)            # None: OK, else the error's status name
    metrics.collect_from(service)                         # items, index vectors, models: read at scrape time
    body, content_type = metrics.render()

What an operator gets (names as exported):
    mmsearch_requests_total{transport,method}                    calls by RPC (gRPC) or route (HTTP)
    mmsearch_request_errors_total{transport,method,status}       failed calls by error status (INVALID_ARGUMENT, ...)
    mmsearch_request_duration_seconds{transport,method}          histogram
    mmsearch_search_stage_seconds{stage}                         histogram: encode, filter, ann, fetch, rerank,
                                                                 caption (stages a search ran), total
    mmsearch_encoder_batch_size{model,kind} / _batch_seconds     histograms: inputs per model call, its time
    mmsearch_collection_items{collection}, mmsearch_index_vectors{collection}
    mmsearch_models_loaded{kind,model}, mmsearch_model_loads_total, mmsearch_decoded_pixels_in_use,
    mmsearch_serving (1 while serving, 0 from SIGTERM on)
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mmsearch.errors import MMSearchError

log = logging.getLogger("mmsearch.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
STAGES = ("encode", "filter", "ann", "fetch", "rerank", "caption")


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mmsearch_requests", "Calls by transport and RPC / route.",
                                ("transport", "method"), registry=self.registry)
        self.errors = Counter("mmsearch_request_errors", "Failed calls by transport, RPC / route and error status.",
                              ("transport", "method", "status"), registry=self.registry)
        self.latency = Histogram("mmsearch_request_duration_seconds", "Call latency by transport and RPC / route.",
                                 ("transport", "method"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stages = Histogram("mmsearch_search_stage_seconds", "Search time per pipeline stage "
                                "(a stage is observed when the search ran it).", ("stage",),
                                buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("mmsearch_encoder_batch_size", "Inputs per batched encoder call.",
                                    ("model", "kind"), buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("mmsearch_encoder_batch_seconds", "Model time per batched encoder call.",
                                       ("model", "kind"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.serving = True
        self._service = None
        self.registry.register(_ScrapeTime(self))

    # -- hooks, called by the transports, the service and the batchers --

    def observe_request(self, transport: str, method: str, status: str | None, seconds: float) -> None:
        self.requests.labels(transport, method).inc()
        self.latency.labels(transport, method).observe(seconds)
        if status is not None:
            self.errors.labels(transport, method, status).inc()

    def observe_search(self, result) -> None:
        timing = result.timing
        for stage in STAGES:
            ms = timing.get(f"{stage}_ms", 0.0)
            if ms > 0 or stage in ("encode", "ann", "fetch"):
                self.stages.labels(stage).observe(ms / 1000.0)
        if "total_ms" in timing:
            self.stages.labels("total").observe(timing["total_ms"] / 1000.0)

    def observe_batch(self, model: str, kind: str, inputs: int, seconds: float) -> None:
        self.batch_size.labels(model, kind).observe(inputs)
        self.batch_seconds.labels(model, kind).observe(seconds)

    def collect_from(self, service) -> None:
        """Read collections, models and the pixel budget from `service` at each scrape."""
        self._service = service

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def status_of(exc: BaseException) -> str:
    """The status label of a failed call: the error class's gRPC status name, INTERNAL for a bug."""
    return exc.grpc_status if isinstance(exc, MMSearchError) else "INTERNAL"


class _ScrapeTime:
    """Gauges read when /metrics is scraped, so they are current without any bookkeeping on the request
    path. A collection that cannot be read is left out of that scrape (and logged), never fails it."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []  # computed at scrape time; nothing to check at registration

    def collect(self):
        serving = GaugeMetricFamily("mmsearch_serving", "1 while the server takes calls, 0 once shutdown began.")
        serving.add_metric([], 1.0 if self.metrics.serving else 0.0)
        yield serving
        service = self.metrics._service
        if service is None:
            return
        items = GaugeMetricFamily("mmsearch_collection_items", "Live items per collection (catalog).",
                                  labels=["collection"])
        vectors = GaugeMetricFamily("mmsearch_index_vectors", "Vectors in each collection's FAISS index.",
                                    labels=["collection"])
        try:
            infos = service.list_collections()
        except MMSearchError as exc:
            log.warning("metrics: cannot list collections: %s", exc)
            infos = []
        for info in infos:
            items.add_metric([info.name], info.items)
            try:
                vectors.add_metric([info.name], service.collection_stats(info.name).indexed)
            except MMSearchError as exc:
                log.warning("metrics: collection %s: %s", info.name, exc)
        yield items
        yield vectors
        loaded = GaugeMetricFamily("mmsearch_models_loaded", "Models loaded now (1 per model).",
                                   labels=["kind", "model"])
        for entry in service.models.loaded():
            kind, name = entry.split(":", 1)
            loaded.add_metric([kind, name], 1.0)
        yield loaded
        loads = CounterMetricFamily("mmsearch_model_loads", "Model loads since start (evictions make reloads).")
        loads.add_metric([], service.models.loads)
        yield loads
        pixels = GaugeMetricFamily("mmsearch_decoded_pixels_in_use", "Decoded image pixels held by requests now "
                                   "(the pixel budget's use).")
        pixels.add_metric([], service.pixel_budget.used)
        yield pixels
