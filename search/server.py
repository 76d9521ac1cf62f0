"""The server process: builds the one service, serves it over gRPC (with health and reflection) and, with
`http`, over HTTP (the search page, the JSON API, /metrics: search/http_api.py), and shuts both down cleanly.

    from search.config import ServerConfig
    from search.server import serve, start
    serve(ServerConfig(address="0.0.0.0:50051", http="0.0.0.0:8080", data_dir="./mmsearch-data"))  # until SIGTERM
    server = start(config); ...; server.stop()                     # in-process, for tests (port, http_port)

Requests run on thread pools (one per transport, `workers` threads each); encoder calls from concurrent
requests are batched (search/batching.py). With a `token`, every SearchService call and /api/ route must
carry `authorization: Bearer <token>` (health, reflection, /healthz, /readyz, /metrics and the page stay
open). With `tls_cert` + `tls_key` both ports speak TLS. One Metrics registry (search/metrics.py) counts
both transports.

Shutdown (SIGTERM, SIGINT or `stop()`): gRPC health and /readyz turn NOT_SERVING at once and stay so for
`health_grace_s` while calls are still accepted, so load balancers move away; then new calls are refused
on both transports and in-flight ones get `drain_seconds` to finish. A handler stuck past that (a read
that never returns) does not keep the process alive: `serve` exits anyway, saying so.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mmsearch.errors import InvalidInput
from search import grpc_api
from search.config import ServerConfig
from search.metrics import Metrics
from search.models import Models
from search.service import Service

log = logging.getLogger("mmsearch.server")

RPC_THREAD_PREFIX = "mmsearch-rpc"


class Server:
    """A started server: `port` (gRPC, None when off), `http_port` (None when off), `stop(grace)`, `wait()`.
    Build with `start(config)`."""

    def __init__(self, service: Service, metrics: Metrics, *, grpc_server=None, executor=None, port=None,
                 health_servicer=None, http=None, http_executor=None, ready=None):
        self.grpc_server, self.executor, self.port = grpc_server, executor, port
        self.health, self.service, self.metrics = health_servicer, service, metrics
        self.http, self.http_executor, self.ready = http, http_executor, ready
        self.http_port = http.port if http is not None else None
        self.store, self.models, self.config = service.store, service.models, service.config
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def stop(self, grace: float | None = None, *, health_grace: float | None = None) -> None:
        """Report NOT_SERVING (gRPC health, /readyz) for `health_grace` seconds (default: the config's) while
        still taking calls, then refuse new calls on both transports, let in-flight ones finish within
        `grace` (default drain_seconds), and release models and the store."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            if self.health is not None:
                self.health.enter_graceful_shutdown()
            if self.ready is not None:
                self.ready.serving = False
            self.metrics.serving = False
            wait = self.config.health_grace_s if health_grace is None else health_grace
            if wait > 0:
                time.sleep(wait)
            drain = self.config.drain_seconds if grace is None else grace
            grpc_done = self.grpc_server.stop(drain) if self.grpc_server is not None else None
            if self.http is not None:
                self.http.stop(drain)
            if grpc_done is not None:
                grpc_done.wait()
            if self.http is not None:
                self.http.wait(drain + 5)
            for executor in (self.executor, self.http_executor):
                if executor is not None:
                    executor.shutdown(wait=False, cancel_futures=True)
            if self.service.searcher.fanout is not None:
                self.service.searcher.fanout.close()
            self.models.close()
            self.store.close()
            self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    def stuck_handlers(self) -> int:
        """Request threads (either transport) still running after stop (a handler that never returned)."""
        return sum(1 for t in threading.enumerate() if t.name.startswith(RPC_THREAD_PREFIX) and t.is_alive())


def build_models(config: ServerConfig, on_batch=None) -> Models:
    return Models(batching=config.batching, max_batch=config.batch_max, max_wait_ms=config.batch_wait_ms,
                  device=config.device, dtype=config.dtype, allow=[*config.allow_models, *config.preload],
                  max_models=max(config.max_models, len(config.preload)), on_batch=on_batch)


def start(config: ServerConfig, *, store=None, models: Models | None = None) -> Server:
    from indexer.store import Store

    config.check()
    metrics = Metrics()
    from search.shards import parse_shard

    store = store or Store.open(config.data_dir, config.db, shard=parse_shard(config.shard),
                                media_dir=config.media_dir, index_memory=config.index_memory)
    models = models or build_models(config, on_batch=metrics.observe_batch)
    for name in config.preload:
        models.dual(name, trusted=True, pin=True)
    service = Service(store, models, config)
    service.on_search = metrics.observe_search
    metrics.collect_from(service)
    parts: dict = {}
    try:
        if config.http:
            parts.update(_start_http(config, service, metrics))
        if config.address:
            parts.update(_start_grpc(config, service, metrics))
    except BaseException:
        if "http" in parts:
            parts["http"].stop(0)
            parts["http"].wait(5)
        models.close()
        store.close()
        raise
    return Server(service, metrics, **parts)


def _start_grpc(config: ServerConfig, service: Service, metrics: Metrics) -> dict:
    limit = config.max_message_bytes
    interceptors = ([grpc_api.BearerTokenInterceptor(config.token, observe=metrics.observe_request)]
                    if config.token else [])
    executor = futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix=RPC_THREAD_PREFIX)
    grpc_server = grpc.server(
        executor, interceptors=interceptors,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                 ("grpc.so_reuseport", 0)])
    grpc_api.add_to_server(service, grpc_server, observe=metrics.observe_request)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (grpc_api.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        grpc_server)
    if config.tls_cert:
        cert, key = _read_pem(config.tls_cert), _read_pem(config.tls_key)
        port = grpc_server.add_secure_port(config.address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = grpc_server.add_insecure_port(config.address)
    if port == 0:
        executor.shutdown(wait=False)
        raise InvalidInput(f"cannot listen on {config.address} (in use, or not a HOST:PORT address)")
    grpc_server.start()
    for name in ("", grpc_api.SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return dict(grpc_server=grpc_server, executor=executor, port=port, health_servicer=health_servicer)


def _start_http(config: ServerConfig, service: Service, metrics: Metrics) -> dict:
    from search.http_api import HttpTransport, Ready, build_app

    executor = futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix=f"{RPC_THREAD_PREFIX}-http")
    ready = Ready()
    http = HttpTransport(build_app(service, metrics, executor, ready), config.http, drain_s=config.drain_seconds,
                         tls_cert=config.tls_cert, tls_key=config.tls_key)
    http.start()
    return dict(http=http, http_executor=executor, ready=ready)


def page_url(address: str, port: int, *, tls: bool = False) -> str:
    """The URL a browser opens for an HTTP listen address (a wildcard host becomes 127.0.0.1)."""
    host = address.rpartition(":")[0].strip("[]")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{port}/"


def _read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None


def serve(config: ServerConfig, *, announce=print) -> int:
    """Run until SIGTERM / SIGINT, then shut down as the module docstring says and return 0."""
    import signal

    server = start(config)
    scheme = "TLS" if config.tls_cert else "plaintext"
    where = []
    if server.port is not None:
        where.append(f"{config.address.rsplit(':', 1)[0]}:{server.port} (gRPC)")
    if server.http_port is not None:
        where.append(f"{page_url(config.http, server.http_port, tls=bool(config.tls_cert))} "
                     f"(page, JSON API /api/v1, docs /docs, /metrics)")
    announce(f"mmsearch serving on {' and '.join(where)} ({scheme}, auth {'on' if config.token else 'off'}, "
             f"data {server.store.data_dir})", flush=True)

    def on_signal(signum, _frame):
        log.info("signal %d: NOT_SERVING for %.1fs, then draining (up to %.0fs)", signum, config.health_grace_s,
                 config.drain_seconds)
        threading.Thread(target=server.stop, name="mmsearch-drain", daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stuck = server.stuck_handlers()
    announce("mmsearch server stopped" + (f" ({stuck} request(s) still stuck; exiting anyway)" if stuck else ""),
             flush=True)
    if stuck:  # their threads would keep the interpreter from exiting
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":  # python -m search.server [config.toml]
    logging.basicConfig(level=logging.INFO)
    sys.exit(serve(ServerConfig.from_file(sys.argv[1]) if len(sys.argv) > 1 else ServerConfig()))
