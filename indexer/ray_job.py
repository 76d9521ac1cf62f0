"""The Ray engine of a bulk job: the same job as indexer/jobs.py, with decoding and encoding on a Ray cluster.

    from indexer.jobs import JobOptions, index_paths, import_embeddings
    from indexer.ray_job import RayOptions
    index_paths(store, "photos", enc, ["/shared/photos"], JobOptions(), engine=RayOptions(address="10.0.0.1:6379",
                actors=4, gpus_per_actor=1))
    import_embeddings(store, "laion", enc, ["/shared/clip-out"], engine=RayOptions(address=..., actors=8))

An import (`import_events`): the driver lists the sources into units (vector_sources.ReadUnit: a parquet
file's run of row groups with its clip-retrieval vectors, an .npy slice with its manifest rows); Ray tasks,
`actors` at a time, read and prepare each unit on any node (import_rows.prepare_unit, the local import's
code) and stream its batches back; the driver commits them in listing order through the local import's
commit.

What runs where: the listing, the skip of uris already indexed and every commit stay on the driver (this
process), in the local job's own code (jobs._Runner: same transactions, same job rows and counts, same
resume); Ray Data runs read + hash + decode + preprocess as CPU tasks (indexer/ingest.py, as the local job's
decode processes do) and the encoding in a pool of actors that each load the encoder once (num_gpus when
asked). A killed driver, actor or node loses at most what was not committed: rerunning the same command
skips what is in the catalog, and content already there is never written twice (the commit re-checks).

Inputs must be readable at the same path on every node (a shared file system), as must the checkpoint, or
be http(s):// / s3:// uris, which the decode tasks read through fsspec (indexer/remote.py) on any node.
Since only the driver writes, the catalog need not be reachable from the workers; still a job over several
machines is refused on SQLite (a file on one of them) and wants PostgreSQL by URL, which the servers of
the cluster's collections share.

Token auth: Ray 2.60 heads require a token. Given --ray-address, this sets RAY_AUTH_MODE=token (unless set)
and lets Ray read the token from $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (the head writes
it there; copy that file to the driver's machine, or print it there with `ray get-auth-token`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsearch.errors import Conflict, InvalidInput, MMSearchError, Unavailable
from indexer.vector_sources import SourceProblem

log = logging.getLogger("mmsearch.indexer")

INSTALL_HINT = 'pip install -e ".[ray]"'


@dataclass
class RayOptions:
    address: str | None = None  # HOST:PORT of a running cluster's head; None starts a local Ray for this job
    actors: int = 1  # encoder actors (each loads the model once)
    gpus_per_actor: float = 0.0  # > 0: actors run on CUDA, Ray places them on GPUs
    cpus_per_actor: float = 1.0
    window: int = 20_000  # listed items per Ray Data run: the driver never holds the whole listing
    object_store_memory: int | None = None  # for a local Ray only (bytes)

    def check(self) -> None:
        if not 1 <= self.actors <= 4096:
            raise InvalidInput(f"actors must be 1..4096, got {self.actors}")
        if not 0 <= self.gpus_per_actor <= 64:
            raise InvalidInput(f"gpus per actor must be 0..64, got {self.gpus_per_actor}")
        if not 0 < self.cpus_per_actor <= 1024:
            raise InvalidInput(f"cpus per actor must be > 0, got {self.cpus_per_actor}")
        if not 1 <= self.window <= 10_000_000:
            raise InvalidInput(f"window must be 1..10000000, got {self.window}")

    def describe(self) -> dict:
        return {"engine": "ray", "ray_address": self.address, "actors": self.actors,
                "gpus_per_actor": self.gpus_per_actor}


def use_token(address: str) -> None:
    """Before Ray is first imported (it reads RAY_AUTH_MODE then): a driver of a running cluster speaks token
    auth, as Ray 2.60 heads do by default, with the head's token; InvalidInput saying where it goes if absent."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token" and not _token_available():
        raise InvalidInput(
            f"the Ray cluster at {address} needs its auth token: copy the head's ~/.ray/auth_token to this "
            "machine, or set RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN); `ray get-auth-token` on the head prints it")


def import_ray(data: bool = True):
    """The ray module (with Ray Data, which an import's tasks do without, unless not `data`), or InvalidInput
    saying how to install it."""
    try:
        import ray

        if data:
            import ray.data  # noqa: F401
    except ImportError:
        raise InvalidInput(f"--engine ray needs {'Ray Data' if data else 'Ray'}, which is not installed: "
                           f"{INSTALL_HINT}") from None
    return ray


class RayEngine:
    """One job's Ray session: `connect` before the job row is written (refusals touch nothing), `events`
    feeds the job runner, `close` ends the session."""

    def __init__(self, options: RayOptions):
        options.check()
        self.options = options
        self.ray = None
        self.started_local = False

    def connect(self, catalog, *, encoder_actors: bool = True) -> None:
        """`encoder_actors`: the job runs the encoder pool (index) beside its CPU tasks; an import runs
        `actors` read tasks only."""
        opt = self.options
        if opt.address:
            use_token(opt.address)
        ray = import_ray(data=encoder_actors)
        if catalog.dialect == "sqlite" and opt.address:
            raise InvalidInput(_SQLITE_REFUSED)
        logging.getLogger("ray").setLevel(logging.WARNING)
        try:
            if ray.is_initialized():
                ray.shutdown()
            kwargs = dict(logging_level="ERROR", log_to_driver=False, include_dashboard=False)
            if opt.address:
                ray.init(address=opt.address, **kwargs)
            else:
                ray.init(object_store_memory=opt.object_store_memory, **kwargs)
                self.started_local = True
        except ConnectionError as exc:
            raise Unavailable(f"cannot reach the Ray cluster at {opt.address}: {_first_line(exc)}") from None
        except Exception as exc:  # AuthenticationError and the like: one line, not a traceback
            if type(exc).__name__ == "AuthenticationError":
                raise Unavailable(f"the Ray cluster at {opt.address} refused this driver's token "
                                  "(RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token must hold the head's)") from None
            raise Unavailable(f"cannot start Ray: {type(exc).__name__}: {_first_line(exc)}") from None
        self.ray = ray
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            if catalog.dialect == "sqlite" and len(nodes) > 1:
                raise InvalidInput(_SQLITE_REFUSED)
            cpus = ray.cluster_resources().get("CPU", 0)
            need = opt.actors * opt.cpus_per_actor + (1 if encoder_actors else 0)
            if cpus < need:
                what = "actor(s)" if encoder_actors else "read task(s)"
                raise InvalidInput(f"the Ray cluster has {cpus:g} CPUs; {opt.actors} {what} of "
                                   f"{opt.cpus_per_actor:g} CPU" + (" and the decode tasks" if encoder_actors else "")
                                   + f" need at least {need:g}")
            if opt.gpus_per_actor and ray.cluster_resources().get("GPU", 0) < opt.gpus_per_actor:
                raise InvalidInput(f"--gpus-per-actor {opt.gpus_per_actor:g}: the Ray cluster has no such GPUs")
        except BaseException:
            self.close()
            raise
        if not encoder_actors:
            return
        import ray.data

        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the job's own bar (items/s, ETA, errors) is the one to read
        ctx.print_on_execution_start = False

    def close(self) -> None:
        if self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()
        self.ray = None

    def events(self, runner, items) -> Iterator[tuple]:
        """The runner's events (as jobs._Runner._handle takes them): skips and listing errors from the
        planner, then per window of listed items ("ok-encoded", Record, decode_s, encode_s) or ("err", uri,
        reason) from the cluster."""
        window: list = []
        for ev in runner._plan(items):
            if ev[0] != "task":
                yield ev
                continue
            window.append(ev[1])
            if len(window) >= self.options.window:
                yield from self._run_window(runner, window)
                window = []
        if window:
            yield from self._run_window(runner, window)

    def import_events(self, units: Iterator, batch_size: int) -> Iterator:
        """An import's batches (jobs.PreparedRows) and SourceProblems in source order: each unit of the listing
        is read and prepared by a Ray task on any node (import_rows.prepare_unit, streaming its batches back),
        `actors` tasks at once (and one queued) ahead of the batch being committed."""
        from collections import deque

        ray = self.ray
        opt = self.options
        # streaming: a unit can be a whole clip-retrieval shard (one row group of a million rows); its batches
        # come back one by one, at most two waiting per task; a task lost with its node is run again
        task = ray.remote(_prepare_unit_task).options(
            num_cpus=opt.cpus_per_actor, max_retries=3, num_returns="streaming",
            _generator_backpressure_num_objects=2)
        pending: deque = deque()  # SourceProblems and running tasks' generators, in listing order
        listing = iter(units)
        running = 0
        head = None
        try:
            while True:
                while running <= opt.actors:  # one more queued, so the next unit is read as soon as a CPU frees
                    unit = next(listing, None)
                    if unit is None:
                        break
                    if isinstance(unit, SourceProblem):
                        pending.append(unit)
                    else:
                        pending.append(task.remote(unit, batch_size))
                        running += 1
                if not pending:
                    return
                head = pending.popleft()
                if isinstance(head, SourceProblem):
                    yield head
                    continue
                for ref in head:
                    yield from ray.get(ref)
                head = None
                running -= 1
        except MMSearchError:
            raise
        except Exception as exc:
            raise _job_stopped(exc) from None
        finally:  # stopped early (an error, Ctrl-C): the tasks still running are of no use
            for left in [head, *pending]:
                if left is not None and not isinstance(left, SourceProblem):
                    try:
                        ray.cancel(left, force=True)
                    except Exception:  # already finished, or the cluster is gone
                        pass

    def _run_window(self, runner, window: list) -> Iterator[tuple]:
        from indexer.ingest import Record

        ray = self.ray
        opt = self.options
        enc = runner.encoder
        batch = runner.opt.batch_size
        rows = [{"uri": it.uri, "path": it.path or "", "data": it.data or b"", "meta": json.dumps(it.meta)}
                for it in window]
        blocks = max(1, min(len(rows), -(-len(rows) // batch)))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        shape = (3,) + tuple(enc.image_preprocessor.output_size)
        # decode tasks are retried when lost with their node; that remote argument also keeps Ray Data from
        # fusing them into the encoder actors (decoding stays spread over every node's CPUs)
        with warnings.catch_warnings():  # Ray 2.60 calls a task option like max_retries a deprecated spelling
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(decode_batch, fn_kwargs={"ingest": runner.ingest, "shape": shape},
                                batch_size=batch, batch_format="numpy", num_cpus=1, max_retries=3)
        dtype = str(getattr(enc, "dtype", "float32")).removeprefix("torch.")
        ds = ds.map_batches(EncoderActor, fn_constructor_kwargs={
            "name": enc.name, "digest": enc.digest, "dtype": dtype,
            "device": "cuda" if opt.gpus_per_actor else "cpu", "threads": max(1, int(opt.cpus_per_actor))},
            batch_size=batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=opt.actors),
            num_cpus=opt.cpus_per_actor,
            num_gpus=opt.gpus_per_actor or None)
        try:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                for i in range(len(out["uri"])):
                    uri = str(out["uri"][i])
                    if out["error"][i]:
                        yield ("err", uri, str(out["error"][i]))
                        continue
                    thumb = bytes(out["thumbnail"][i])
                    record = Record(uri=uri, sha256=str(out["sha256"][i]), width=int(out["width"][i]),
                                    height=int(out["height"][i]), meta=json.loads(str(out["meta"][i])),
                                    thumbnail=thumb or None, vector=np.asarray(out["vector"][i], dtype="<f4"))
                    yield ("ok-encoded", record, float(out["decode_s"][i]), float(out["encode_s"][i]))
        except MMSearchError:
            raise
        except Exception as exc:
            raise _job_stopped(exc) from None


# ---- what runs on the cluster ---------------------------------------------------------------------------------


CHUNK_BYTES = 16 << 20  # vector bytes an import task sends back in one object (a batch at least)


def _prepare_unit_task(unit, batch_size: int):
    """A Ray task: one unit of an import, read and prepared where it runs (the local import's own code), sent
    back in chunks of batches (lists): one object per small batch would cost a round trip each."""
    from indexer.import_rows import PreparedRows, prepare_unit

    chunk, size = [], 0
    for part in prepare_unit(unit, batch_size):
        chunk.append(part)
        if isinstance(part, PreparedRows):
            size += sum(r.vector.nbytes for r in part.rows)
        if size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def decode_batch(batch: dict, *, ingest, shape: tuple) -> dict:
    """A Ray Data CPU task: read, hash, check, decode and preprocess a batch (indexer/ingest.py). Rows that
    fail keep their uri and carry the reason; their pixels are zeros the encoder skips."""
    from indexer.ingest import SourceItem
    from indexer.jobs import decode_item

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    n = len(batch["uri"])
    out = {"uri": [], "sha256": [], "width": np.zeros(n, np.int64), "height": np.zeros(n, np.int64), "meta": [],
           "thumbnail": [], "error": [], "decode_s": np.zeros(n, np.float64),
           "pixels": np.zeros((n,) + tuple(shape), np.float32)}
    for i in range(n):
        uri, path, data = str(batch["uri"][i]), str(batch["path"][i]), bytes(batch["data"][i])
        item = SourceItem(uri=uri, path=path or None, data=data if not path else None,
                          meta=json.loads(str(batch["meta"][i])))
        ev = decode_item(item, ingest)
        if ev[0] == "ok":
            record = ev[1]
            out["uri"].append(record.uri)
            out["sha256"].append(record.sha256)
            out["width"][i], out["height"][i] = record.width, record.height
            out["meta"].append(json.dumps(record.meta))
            out["thumbnail"].append(record.thumbnail or b"")
            out["error"].append("")
            out["decode_s"][i] = ev[2]
            out["pixels"][i] = record.pixels
        else:
            out["uri"].append(uri or "<bytes>")
            out["sha256"].append("")
            out["meta"].append("{}")
            out["thumbnail"].append(b"")
            out["error"].append(ev[2])
    for key in ("uri", "sha256", "meta", "error"):
        out[key] = np.array(out[key], dtype=object)
    thumbs = np.empty(n, dtype=object)
    thumbs[:] = out["thumbnail"]
    out["thumbnail"] = thumbs
    return out


class EncoderActor:
    """A Ray Data actor: loads the collection's encoder once, then encodes batches of preprocessed pixels."""

    def __init__(self, name: str, digest: str, dtype: str, device: str, threads: int):
        import torch

        import encoders

        if device == "cpu":
            torch.set_num_threads(threads)
        self.encoder = encoders.load(name, device=device, dtype=dtype)
        if self.encoder.digest != digest:
            raise Conflict(f"the encoder at {name} on this Ray node has digest {self.encoder.digest[:12]}, the "
                           f"collection {digest[:12]}: every node must see the same checkpoint")

    def __call__(self, batch: dict) -> dict:
        import torch

        ok = batch["error"] == ""
        n = len(ok)
        vectors = np.zeros((n, int(self.encoder.dim)), np.float32)
        t0 = time.perf_counter()
        if ok.any():
            vectors[ok] = self.encoder.encode_pixels(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        spent = (time.perf_counter() - t0) / max(1, int(ok.sum()))
        out = {k: v for k, v in batch.items() if k != "pixels"}  # the pixels need not travel back
        out["vector"] = vectors
        out["encode_s"] = np.where(ok, spent, 0.0)
        return out


# ---- helpers ----------------------------------------------------------------------------------------------------

_SQLITE_REFUSED = ("a Ray job over a cluster needs a catalog every machine can share: give --db "
                   "postgresql+psycopg://USER@HOST/DB (SQLite is a file on one machine); a local Ray "
                   "(no --ray-address) works with SQLite")


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return os.path.isfile(path)


def _job_stopped(exc: BaseException) -> MMSearchError:
    """What to raise when the cluster's part of a job failed (a lost cluster, an actor that cannot load the
    model, a task's own error): one line."""
    cause = _user_error(exc)
    if cause is not None:
        return cause
    return Unavailable(f"the Ray job stopped ({type(exc).__name__}: {_first_line(exc)}); what was "
                       "committed stays, rerun the same command to resume")


def _user_error(exc: BaseException) -> MMSearchError | None:
    """The MMSearchError a Ray task or actor raised (Ray wraps it), if that is what stopped the job."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MMSearchError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
