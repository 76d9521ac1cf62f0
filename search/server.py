"""The server process: builds the service, serves it over gRPC (with health and reflection), shuts down
cleanly.

    from search.config import ServerConfig
    from search.server import serve, start
    serve(ServerConfig(address="0.0.0.0:50051", data_dir="./mmsearch-data"))    # blocks until SIGTERM/SIGINT
    server = start(config); ...; server.stop()                                   # in-process, for tests

Requests run on a thread pool; encoder calls from concurrent requests are batched (search/batching.py).
With a `token`, every SearchService call must carry `authorization: Bearer <token>` metadata (health and
reflection stay open, so probes and grpcurl listing work). With `tls_cert` + `tls_key` the port speaks TLS.

Shutdown (SIGTERM, SIGINT or `stop()`): health turns NOT_SERVING at once and stays so for
`health_grace_s` while calls are still accepted, so load balancers move away; then new calls are refused
and in-flight ones get `drain_seconds` to finish. A handler stuck past that (a read that never returns)
does not keep the process alive: `serve` exits anyway, saying so.
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
from search.models import Models
from search.service import Service

log = logging.getLogger("mmsearch.server")

RPC_THREAD_PREFIX = "mmsearch-rpc"


class Server:
    """A started server: `port`, `stop(grace)`, `wait()`. Build with `start(config)`."""

    def __init__(self, grpc_server, executor, port: int, health_servicer, service: Service):
        self.grpc_server, self.executor, self.port = grpc_server, executor, port
        self.health, self.service = health_servicer, service
        self.store, self.models, self.config = service.store, service.models, service.config
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def stop(self, grace: float | None = None, *, health_grace: float | None = None) -> None:
        """Report NOT_SERVING for `health_grace` seconds (default: the config's) while still taking calls,
        then refuse new calls, let in-flight ones finish within `grace` (default drain_seconds), and
        release models and the store."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self.health.enter_graceful_shutdown()
            wait = self.config.health_grace_s if health_grace is None else health_grace
            if wait > 0:
                time.sleep(wait)
            self.grpc_server.stop(self.config.drain_seconds if grace is None else grace).wait()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.models.close()
            self.store.close()
            self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    def stuck_handlers(self) -> int:
        """Request threads still running after stop (a handler that never returned)."""
        return sum(1 for t in threading.enumerate() if t.name.startswith(RPC_THREAD_PREFIX) and t.is_alive())


def build_models(config: ServerConfig) -> Models:
    return Models(batching=config.batching, max_batch=config.batch_max, max_wait_ms=config.batch_wait_ms,
                  device=config.device, dtype=config.dtype, allow=[*config.allow_models, *config.preload],
                  max_models=max(config.max_models, len(config.preload)))


def start(config: ServerConfig, *, store=None, models: Models | None = None) -> Server:
    from indexer.store import Store

    config.check()
    store = store or Store.open(config.data_dir, config.db)
    models = models or build_models(config)
    for name in config.preload:
        models.dual(name, trusted=True, pin=True)
    service = Service(store, models, config)
    limit = config.max_message_bytes
    interceptors = [grpc_api.BearerTokenInterceptor(config.token)] if config.token else []
    executor = futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix=RPC_THREAD_PREFIX)
    grpc_server = grpc.server(
        executor, interceptors=interceptors,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                 ("grpc.so_reuseport", 0)])
    grpc_api.add_to_server(service, grpc_server)
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
        raise InvalidInput(f"cannot listen on {config.address} (in use, or not a HOST:PORT address)")
    grpc_server.start()
    for name in ("", grpc_api.SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Server(grpc_server, executor, port, health_servicer, service)


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
    host = config.address.rsplit(":", 1)[0]
    scheme = "TLS" if config.tls_cert else "plaintext"
    announce(f"mmsearch serving on {host}:{server.port} ({scheme}, auth {'on' if config.token else 'off'}, "
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
