"""The bulk indexing pipeline: list -> read + decode + preprocess (worker processes) -> batched encode
(this process) -> commit every N items in one transaction (rows, vectors, errors, job counts together)
-> apply to the FAISS index.

    from indexer.jobs import JobOptions, index_paths, index_objects
    result = index_paths(store, "photos", enc, ["/data/photos", "extra.csv"], JobOptions(workers=2))
    result = index_objects(store, "photos", enc, [(b"...jpeg bytes...", {"tag": "x"}), ("/a.png", {})])
    result = import_embeddings(store, "laion", enc, ["/data/clip-out"], ImportOptions(batch_size=10000))

`import_embeddings` is the same job without decoding or encoding: precomputed vectors and their metadata
(indexer/vector_sources.py, rows prepared by indexer/import_rows.py, here or in Ray tasks) go through the
same commit (`commit_batch`) and job record.

Resumable: a uri already in the collection is skipped without being read (unless `update`, which reads it
and re-embeds it when its sha256 changed), and content already in the collection (same sha256) is
skipped, so rerunning a job adds nothing and a killed job picks up where its last commit ended. A crash
loses at most the uncommitted batch: the catalog commit is atomic, and the index catches up from the
catalog when it is next opened.

Bad inputs (corrupt, truncated, empty, non-image, too many pixels, unreadable, dangling links) are
recorded as job errors and counted; the job goes on. Queues are bounded, so memory stays flat in the
number of items.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import queue
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import update

from mmsearch.errors import InvalidInput, NothingIndexed
from encoders.preprocess import DEFAULT_MAX_PIXELS
from indexer.catalog import Job, JobError, utcnow
from indexer.ingest import Ingest, Record, SourceItem, failure_reason, store_thumbnail
from indexer.sources import check_paths, count_paths, iter_objects, iter_paths
from indexer.store import CollectionHandle, Store, UpsertRow
from indexer.import_rows import PreparedRows, import_units, prepare_unit
from indexer.vector_sources import SourceProblem, open_sources

log = logging.getLogger("mmsearch.indexer")


@dataclass
class JobOptions:
    workers: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) - 1))  # 0: decode in-process
    batch_size: int = 32  # images per encoder call
    commit_every: int = 256  # items per catalog transaction
    update: bool = False  # re-read known uris and re-embed those whose content changed
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_bytes: int = 256 * 1024 * 1024
    progress: bool = False
    save_every_s: float = 60.0  # how often the index file is rewritten while a job runs
    thumbnails: bool = True  # write each new item's thumbnail (DATA_DIR/thumbs) for the search page

    def check(self) -> None:
        if not 0 <= self.workers <= 256:
            raise InvalidInput(f"workers must be 0..256, got {self.workers}")
        if not 1 <= self.batch_size <= 4096:
            raise InvalidInput(f"batch size must be 1..4096, got {self.batch_size}")
        if not 1 <= self.commit_every <= 1_000_000:
            raise InvalidInput(f"commit-every must be 1..1000000, got {self.commit_every}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise InvalidInput("max pixels must be positive")
        if self.max_bytes < 1:
            raise InvalidInput("max bytes must be positive")


@dataclass
class JobResult:
    job_id: int
    state: str
    seen: int = 0
    added: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    decode_s: float = 0.0
    encode_s: float = 0.0
    index_s: float = 0.0  # bringing the index up to date at the end (import: building it)

    @property
    def rate(self) -> float:
        return (self.added + self.updated) / self.elapsed_s if self.elapsed_s else 0.0


# ---- the worker half ----------------------------------------------------------------------------------------


def decode_item(item: SourceItem, ingest: Ingest):
    """Read, hash, decode and preprocess one input (indexer/ingest.py): ("ok", Record, cpu seconds) or
    ("err", uri, reason)."""
    if item.error:
        return ("err", item.uri, item.error)
    t0 = time.process_time()
    try:
        return ("ok", ingest(item), time.process_time() - t0)
    except Exception as exc:  # one bad file is recorded, the job goes on
        return ("err", item.uri, failure_reason(exc, item))


def job_ingest(encoder, options: "JobOptions", captioner=None) -> Ingest:
    """How a bulk job reads its items: any path it was given, decoded for the encoder's preprocessor."""
    prep = encoder.image_preprocessor
    return Ingest(max_bytes=options.max_bytes, max_pixels=options.max_pixels, draft_size=prep.draft_size,
                  preprocessor=prep, thumbnails=options.thumbnails, keep_image=captioner is not None,
                  caption_size=True)


def _worker(task_q, conn, ingest, parent_pid):
    """Decode loop. Results go back over this worker's own pipe with a blocking send: a result is either
    wholly received or, if this process dies, the main process reads end-of-file (never half a message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business
    _die_with_parent()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    try:
        while True:
            try:
                task = task_q.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent_pid:
                    os._exit(0)  # the job process died (kill -9): do not linger
                continue
            if task is None:
                conn.send(("done",))
                conn.close()
                return
            seq, item = task
            conn.send((seq,) + decode_item(item, ingest))
    except (BrokenPipeError, EOFError, OSError):
        os._exit(0)  # the main process is gone


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the job process dies (kill -9 included)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ---- the main half -------------------------------------------------------------------------------------------


def index_paths(store: Store, collection: str, encoder, paths: Iterable[str], options: JobOptions | None = None,
                *, captioner=None, index_spec: str | None = None, engine=None,
                text_fields: Iterable[str] | None = None) -> JobResult:
    """Index folders, image files and manifests into `collection` (created and bound to `encoder` if new;
    `text_fields`: the metadata fields its full-text index holds, see Store.open_or_create).
    `engine`: None runs here (decode processes + this process's encoder); an indexer.ray_job.RayOptions runs
    the decoding and encoding on a Ray cluster, with the same commits from here."""
    paths = check_paths(paths)
    options = options or JobOptions()
    total = count_paths(paths) if options.progress else None
    return run_job(store, collection, encoder, iter_paths(paths), options, sources=paths, total=total,
                   captioner=captioner, index_spec=index_spec, engine=engine, text_fields=text_fields)


def index_objects(store: Store, collection: str, encoder, objects: Iterable, options: JobOptions | None = None,
                  *, captioner=None, index_spec: str | None = None, text_fields: Iterable[str] | None = None
                  ) -> JobResult:
    """Index an iterable of (path or bytes, metadata dict) pairs."""
    options = options or JobOptions()
    total = len(objects) if hasattr(objects, "__len__") else None
    return run_job(store, collection, encoder, iter_objects(objects), options, sources=["<python objects>"],
                   total=total, captioner=captioner, index_spec=index_spec, text_fields=text_fields)


def run_job(store: Store, collection: str, encoder, items: Iterator[SourceItem], options: JobOptions, *,
            sources: list[str], total: int | None = None, captioner=None, index_spec: str | None = None,
            engine=None, text_fields: Iterable[str] | None = None) -> JobResult:
    options.check()
    ray_engine = None
    if engine is not None:
        from indexer.ray_job import RayEngine

        if captioner is not None:
            raise InvalidInput("captions (--caption) are not made by Ray jobs yet: run the job without --engine ray")
        ray_engine = RayEngine(engine)
        ray_engine.connect(store.catalog)  # refusals (no Ray, SQLite over a cluster) before anything is written
    try:
        handle = store.open_or_create(collection, encoder, index_spec, text_fields=text_fields)
        job_id = _start_job(handle, sources, options, captioner, engine)
        return _Runner(handle, encoder, captioner, options, job_id, total, ray_engine).run(items)
    finally:
        if ray_engine is not None:
            ray_engine.close()


def _start_job(handle: CollectionHandle, sources: list[str], options: JobOptions, captioner, engine=None) -> int:
    return start_job(handle, sources, {"workers": options.workers, "batch_size": options.batch_size,
                                       "commit_every": options.commit_every, "update": options.update,
                                       "max_pixels": options.max_pixels,
                                       "caption_model": getattr(captioner, "name", None),
                                       **(engine.describe() if engine is not None else {"engine": "local"})})


def start_job(handle: CollectionHandle, sources: list[str], options: dict) -> int:
    """Record a new job (of `index` or `import`); an unfinished job over the same sources is the one it
    resumes (`resumed_from`). Returns the job id."""
    catalog = handle.catalog
    catalog.mark_stale_jobs(handle.id)
    unfinished = [j for j in catalog.list_jobs(handle.id, limit=20) if j.state != "done" and j.sources == sources]
    resumed = unfinished[0].id if unfinished else None
    with catalog.session() as s:
        job = Job(collection_id=handle.id, sources=sources, resumed_from=resumed, options=options)
        s.add(job)
        s.flush()
        return job.id


def commit_batch(handle: CollectionHandle, job_id: int, rows: list[UpsertRow], errors: list[tuple[str, str]], *,
                 seen: int, skipped: int, replace_uri: bool, timings: dict | None = None,
                 apply_index: bool = True) -> tuple[int, int, int]:
    """One transaction of a bulk job: new and changed items with their vectors, the errors, the job's
    counts (and seconds spent, `timings`: decode_s / encode_s / commit_s). Then the open index (unless
    not `apply_index`: the index catches up from the catalog when next opened). Returns (added, updated,
    skipped): `skipped` counts `skipped` plus rows whose content is already held."""
    timings = timings or {}
    with handle.catalog.write(handle.id) as (s, rev):
        outcome, ids, vecs = handle.write_rows(s, rev, rows, replace_uri=replace_uri)
        added = sum(1 for _, what in outcome if what == "added")
        updated = sum(1 for _, what in outcome if what == "updated")
        # "duplicate": the same content is already indexed (an unchanged file, or a copy elsewhere)
        skipped += len(outcome) - added - updated
        if errors:
            s.execute(JobError.__table__.insert(), [{"job_id": job_id, "uri": uri[:4000], "reason": reason[:2000],
                                                     "created": utcnow()} for uri, reason in errors])
        s.execute(update(Job).where(Job.id == job_id).values(
            seen=Job.seen + seen, added=Job.added + added, updated_count=Job.updated_count + updated,
            skipped=Job.skipped + skipped, failed=Job.failed + len(errors),
            decode_s=Job.decode_s + timings.get("decode_s", 0.0), encode_s=Job.encode_s + timings.get("encode_s", 0.0),
            commit_s=Job.commit_s + timings.get("commit_s", 0.0)))
    if apply_index:
        handle.apply_commit(rev, ids, vecs)
    return added, updated, skipped


def finish_job(handle: CollectionHandle, job_id: int, state: str, message: str | None) -> None:
    """Save the index (retuned under an automatic spec when the job is done) and record how the job ended."""
    try:
        handle.save_index()
        if state == "done":
            handle.maybe_retrain()
    except Exception as exc:
        if state == "done":
            raise
        log.warning("could not save the index after the job stopped: %s", exc)  # rebuilt on next open
    finally:
        with handle.catalog.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(state=state, message=message, finished=utcnow()))


def run_recorded(handle: CollectionHandle, job_id: int, result: JobResult, body, *, noun: str, bar=None) -> JobResult:
    """Run a job's `body` and record how it ended (done, failed, interrupted), then bring the index up to
    date (finish_job). `result.elapsed_s` is the body's time, `result.index_s` the index's. `bar()`: the
    progress bar to close, if any. NothingIndexed when every input failed."""
    t0 = time.perf_counter()
    state, message = "done", None
    try:
        body()
        if result.added + result.updated + result.skipped == 0 and result.failed:
            state, message = "failed", f"nothing could be {noun}: {result.failed} inputs failed"
    except KeyboardInterrupt:
        state, message = "interrupted", "interrupted (Ctrl-C); rerun the same command to resume"
        raise
    except BaseException as exc:
        state, message = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        shown = bar() if bar is not None else None
        if shown is not None:
            shown.close()
        result.elapsed_s = time.perf_counter() - t0
        try:
            finish_job(handle, job_id, state, message)
        finally:
            result.state = state
            result.index_s = time.perf_counter() - t0 - result.elapsed_s
    if state == "failed":
        raise NothingIndexed(f"{message} (see `mmsearch jobs --job {job_id}`)")
    return result


class _Runner:
    def __init__(self, handle: CollectionHandle, encoder, captioner, options: JobOptions, job_id: int,
                 total: int | None, ray_engine=None):
        self.handle, self.encoder, self.captioner, self.opt = handle, encoder, captioner, options
        self.catalog = handle.catalog
        self.job_id = job_id
        self.total = total
        self.result = JobResult(job_id=job_id, state="running")
        self.ingest = job_ingest(encoder, options, captioner)
        self.ray_engine = ray_engine
        self.decoded: list[Record] = []  # waiting for the encoder
        self.encoded: list[Record] = []  # waiting for the commit
        self.errors: list[tuple[str, str]] = []
        self.pending_counts = dict(seen=0, skipped=0)
        self.pending_decode_s = 0.0
        self.pending_encode_s = 0.0
        self.pending_commit_s = 0.0
        self.last_save = time.monotonic()
        self.bar = None

    # the whole job --------------------------------------------------------------------------------------------

    def run(self, items: Iterator[SourceItem]) -> JobResult:
        def body():
            self.handle.refresh()  # open (or build) the index before the first commit touches it
            if self.opt.progress:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, unit="img", dynamic_ncols=True, smoothing=0.1,
                                desc=f"index {self.handle.name}")
            if self.ray_engine is not None:
                events = self.ray_engine.events(self, items)
            elif self.opt.workers == 0:
                events = self._inline(items)
            else:
                events = self._with_workers(items)
            try:
                for event in events:
                    self._handle(event)
            finally:
                events.close()  # stops the workers now, also on Ctrl-C
            self._flush(final=True)

        return run_recorded(self.handle, self.job_id, self.result, body, noun="indexed", bar=lambda: self.bar)

    # event sources: in-process, or worker processes ----------------------------------------------------------

    def _plan(self, items: Iterator[SourceItem]) -> Iterator[tuple]:
        """("task", item) for inputs to read, ("skip", uri) for uris already indexed, ("err", uri, reason)."""
        chunk: list[SourceItem] = []

        def drain():
            known = self.catalog.existing_uris(self.handle.id, [it.uri for it in chunk if it.uri and not it.error])
            for it in chunk:
                if it.error:
                    yield ("err", it.uri, it.error)
                elif it.uri in known and not self.opt.update:
                    yield ("skip", it.uri)
                else:
                    yield ("task", it)
            chunk.clear()

        for it in items:
            chunk.append(it)
            if len(chunk) >= 256:
                yield from drain()
        yield from drain()

    def _inline(self, items):
        for ev in self._plan(items):
            if ev[0] == "task":
                yield decode_item(ev[1], self.ingest)
            else:
                yield ev

    def _with_workers(self, items):
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        n = self.opt.workers
        task_q = ctx.Queue(maxsize=4 * n)
        common = (self.ingest, os.getpid())
        readers: dict = {}  # result pipe -> its process

        def start_worker(i: int) -> None:
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(task_q, writer) + common, daemon=True,
                               name=f"mmsearch-decode-{i}")
            proc.start()
            writer.close()  # only the worker holds the write end, so its death reads as end-of-file
            readers[reader] = proc

        for i in range(n):
            start_worker(i)
        in_flight: dict[int, str] = {}  # seq -> uri, for inputs a crashed worker never answered
        # skips and listing errors stay in this process (they need no decoding)
        local_q: queue.Queue = queue.Queue(maxsize=1024)
        stop = threading.Event()
        feeder_error: list[BaseException] = []
        feeder_done = threading.Event()

        def feed():
            try:
                seq = 0
                for ev in self._plan(items):
                    if stop.is_set():
                        return
                    if ev[0] == "task":
                        seq += 1
                        in_flight[seq] = ev[1].uri
                        _put_until(task_q, (seq, ev[1]), stop)
                    else:
                        _put_until(local_q, ev, stop)
            except BaseException as exc:  # surfaced by the main thread
                feeder_error.append(exc)
            finally:
                feeder_done.set()
                for _ in range(n):
                    _put_until(task_q, None, stop)

        feeder = threading.Thread(target=feed, name="mmsearch-feeder", daemon=True)
        feeder.start()
        finished = 0
        said_done: set = set()
        started = n
        try:
            while True:
                while True:
                    try:
                        yield local_q.get_nowait()
                    except queue.Empty:
                        break
                if finished == n and feeder_done.is_set() and local_q.empty():
                    break
                busy_feeder = not (feeder_done.is_set() and local_q.empty())
                ready = mp_connection.wait(list(readers), timeout=0.01 if busy_feeder or finished == n else 0.5)
                for reader in ready:
                    try:
                        msg = reader.recv()
                    except (EOFError, OSError):
                        proc = readers.pop(reader)
                        proc.join(timeout=5)
                        if reader not in said_done:  # died before its "done": a crash; input reported below
                            log.warning("decode worker %s died (exit %s); starting another", proc.name,
                                        proc.exitcode)
                            start_worker(started)
                            started += 1
                        continue
                    if msg[0] == "done":
                        finished += 1
                        said_done.add(reader)
                        continue
                    in_flight.pop(msg[0], None)
                    yield msg[1:]
            if feeder_error:
                raise feeder_error[0]
            for seq, uri in sorted(in_flight.items()):  # lost with a crashed worker
                yield ("err", uri, "the decoder process crashed on this input")
        finally:
            stop.set()
            for proc in readers.values():
                if proc.is_alive():
                    proc.terminate()
            for reader, proc in readers.items():
                proc.join(timeout=5)
                reader.close()
            for reader in said_done:
                reader.close()
            task_q.cancel_join_thread()

    # the pipeline body -----------------------------------------------------------------------------------------

    def _handle(self, ev: tuple) -> None:
        kind = ev[0]
        self.pending_counts["seen"] += 1
        if kind == "ok":
            self.decoded.append(ev[1])
            self.pending_decode_s += ev[2]
            if len(self.decoded) >= self.opt.batch_size:
                self._encode()
        elif kind == "ok-encoded":  # decoded and encoded elsewhere (the Ray engine)
            record = ev[1]
            self.pending_decode_s += ev[2]
            self.pending_encode_s += ev[3]
            if np.isfinite(record.vector).all():
                self.encoded.append(record)
            else:
                self.errors.append((record.uri, "the encoder produced a non-finite vector"))
        elif kind == "skip":
            self.pending_counts["skipped"] += 1
        else:
            self.errors.append((ev[1] or "<bytes>", ev[2]))
        if self.bar is not None:
            self.bar.update(1)
        if len(self.encoded) + len(self.errors) + self.pending_counts["skipped"] >= self.opt.commit_every:
            self._flush()

    def _encode(self) -> None:
        batch, self.decoded = self.decoded, []
        if not batch:
            return
        # content already in the collection is not worth encoding (the commit re-checks authoritatively)
        with self.catalog.session() as s:
            known = self.catalog.existing_shas(s, self.handle.id, [d.sha256 for d in batch])
        fresh = [d for d in batch if d.sha256 not in known]
        self.pending_counts["skipped"] += len(batch) - len(fresh)
        if not fresh:
            return
        import torch

        t0 = time.perf_counter()
        vecs = self.encoder.encode_pixels(torch.from_numpy(np.stack([d.pixels for d in fresh])))
        if self.captioner is not None:
            for d, text in zip(fresh, self.captioner.caption([d.image for d in fresh])):
                d.caption = text
        self.pending_encode_s += time.perf_counter() - t0
        for d, v in zip(fresh, vecs):
            d.pixels, d.image = None, None  # free the big arrays now
            if np.isfinite(v).all():
                d.vector = np.ascontiguousarray(v, dtype="<f4")
                self.encoded.append(d)
            else:
                self.errors.append((d.uri, "the encoder produced a non-finite vector"))

    def _flush(self, final: bool = False) -> None:
        self._encode()
        t0 = time.perf_counter()
        self._commit()
        self.pending_commit_s += time.perf_counter() - t0
        if self.bar is not None:
            self.bar.set_postfix(added=self.result.added, skipped=self.result.skipped, errors=self.result.failed)
        if not final and time.monotonic() - self.last_save > self.opt.save_every_s:
            self.handle.save_index()
            self.last_save = time.monotonic()

    def _commit(self) -> None:
        """One transaction: new and changed items with their vectors, errors, job counts. Then the index."""
        batch, errors = self.encoded, self.errors
        counts = dict(self.pending_counts)
        if not batch and not errors and not counts["seen"]:
            return
        for d in batch:  # before the commit, so a committed item has its thumbnail (an orphan one is harmless)
            store_thumbnail(self.handle.store.media_dir, d)
        rows = [UpsertRow(uri=d.uri, sha256=d.sha256, width=d.width, height=d.height, vector=d.vector,
                          meta=d.meta or None, caption=d.caption) for d in batch]
        added, updated, skipped = commit_batch(
            self.handle, self.job_id, rows, errors, seen=counts["seen"], skipped=counts["skipped"],
            replace_uri=self.opt.update, timings={"decode_s": self.pending_decode_s, "encode_s": self.pending_encode_s,
                                                   "commit_s": self.pending_commit_s})
        r = self.result
        r.seen += counts["seen"]
        r.added += added
        r.updated += updated
        r.skipped += skipped
        r.failed += len(errors)
        r.decode_s += self.pending_decode_s
        r.encode_s += self.pending_encode_s
        self.encoded, self.errors = [], []
        self.pending_counts = dict(seen=0, skipped=0)
        self.pending_decode_s = self.pending_encode_s = self.pending_commit_s = 0.0


def _put_until(q, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


# ---- importing precomputed embeddings ------------------------------------------------------------------------


@dataclass
class ImportOptions:
    # rows per catalog transaction: the indexes on random keys (sha256, width, metadata values) cost a page
    # written per key and commit, so at millions of items larger commits write far less per row
    batch_size: int = 50_000
    update: bool = False  # replace items whose uri is already in the collection (else they are skipped)
    progress: bool = False
    vector_column: str | None = None  # parquet: the vector column, when there are several
    manifest: str | None = None  # .npy: its manifest, when not beside it

    def check(self) -> None:
        if not 1 <= self.batch_size <= 1_000_000:
            raise InvalidInput(f"batch must be 1..1000000 rows, got {self.batch_size}")


def import_embeddings(store: Store, collection: str, encoder, paths: Iterable[str],
                      options: ImportOptions | None = None, *, index_spec: str | None = None,
                      engine=None) -> JobResult:
    """Import precomputed embeddings with their metadata (indexer/vector_sources.py: clip-retrieval output,
    parquet, .npy + manifest) into `collection`, created and bound to `encoder` if new (so text queries
    use it). Vectors must have the encoder's dim; they are L2-normalised on the way in. Each batch is one
    catalog transaction of the same kind `index` commits (rows, vectors, errors, job counts); like
    `index`, a rerun skips uris already in the collection, so a killed import resumed with the same
    command ends with every row present once. The index is not kept up to date while rows stream in: it
    is built (or caught up) from the catalog once at the end.
    `engine`: None reads and prepares the rows here; an indexer.ray_job.RayOptions has Ray tasks read and
    prepare the sources' units on the cluster (prepare_unit), committed from here in source order."""
    options = options or ImportOptions()
    options.check()
    sources = open_sources(paths, vector_column=options.vector_column, manifest=options.manifest)
    for src in sources:
        if src.dim != int(encoder.dim):
            raise InvalidInput(f"import: {src.path} holds {src.dim}-d vectors; {encoder.name} makes "
                               f"{encoder.dim}-d ones (give the model the vectors were made with)")
    ray_engine = None
    if engine is not None:
        from indexer.ray_job import RayEngine

        ray_engine = RayEngine(engine)
        ray_engine.connect(store.catalog, encoder_actors=False)  # refusals before anything is written
    try:
        handle = store.open_or_create(collection, encoder, index_spec)
        names = [src.path for src in sources]
        job_id = start_job(handle, names, {"kind": "import", "batch_size": options.batch_size,
                                           "update": options.update, "model": encoder.name,
                                           **(engine.describe() if engine is not None else {"engine": "local"})})
        return _Importer(handle, job_id, options, ray_engine).run(sources)
    finally:
        if ray_engine is not None:
            ray_engine.close()


def _local_import(sources, batch_size: int) -> Iterator[PreparedRows | SourceProblem]:
    for unit in import_units(sources, batch_size):
        if isinstance(unit, SourceProblem):
            yield unit
        else:
            yield from prepare_unit(unit, batch_size)


class _Importer:
    def __init__(self, handle: CollectionHandle, job_id: int, options: ImportOptions, ray_engine=None):
        self.handle, self.job_id, self.opt = handle, job_id, options
        self.ray_engine = ray_engine
        self.result = JobResult(job_id=job_id, state="running")
        self.problems: list[tuple[str, str]] = []  # shard-level errors waiting for the next commit
        self.last_commit_s = 0.0  # recorded with the next commit, as the index job does

    def run(self, sources) -> JobResult:
        bar = None

        def body():
            nonlocal bar
            if self.opt.progress:
                from tqdm import tqdm

                bar = tqdm(total=sum(src.rows for src in sources), unit="row", unit_scale=True, dynamic_ncols=True,
                           smoothing=0.1, desc=f"import {self.handle.name}")
            size = self.opt.batch_size
            if self.ray_engine is not None:
                events = self.ray_engine.import_events(import_units(sources, size), size)
            else:
                events = _local_import(sources, size)
            try:
                for part in events:
                    if isinstance(part, PreparedRows):
                        self._commit(part)
                        if bar is not None:
                            bar.update(part.seen)
                            r = self.result
                            bar.set_postfix(added=r.added, skipped=r.skipped, errors=r.failed)
                    else:
                        self.problems.append((part.where, part.reason))
            finally:
                events.close()
            if self.problems:
                self._commit(None)

        return run_recorded(self.handle, self.job_id, self.result, body, noun="imported", bar=lambda: bar)

    def _commit(self, part: PreparedRows | None) -> None:
        t0 = time.perf_counter()
        rows, errors, seen, prepare_s = ([], [], 0, 0.0) if part is None else (
            part.rows, part.errors, part.seen, part.prepare_s)
        errors = self.problems + errors
        seen += len(self.problems)
        self.problems = []
        skipped = 0
        if not self.opt.update:
            # a uri twice: the first row wins, within a batch as across batches (a known uri is skipped)
            first: dict[str, UpsertRow] = {}
            for r in rows:
                first.setdefault(r.uri, r)
            unique = list(first.values())
            known = self.handle.catalog.existing_uris(self.handle.id, [r.uri for r in unique]) if unique else {}
            fresh = [r for r in unique if r.uri not in known]  # resume: rows already imported are not written again
            skipped, rows = len(rows) - len(fresh), fresh
        t1 = time.perf_counter()
        # decode_s: reading and preparing the rows (and the uri check); commit_s: the write transactions
        prepared_s = prepare_s + t1 - t0
        added, updated, skipped = commit_batch(
            self.handle, self.job_id, rows, errors, seen=seen, skipped=skipped, replace_uri=self.opt.update,
            timings={"decode_s": prepared_s, "commit_s": self.last_commit_s}, apply_index=False)
        self.last_commit_s = time.perf_counter() - t1
        r = self.result
        r.decode_s += prepared_s
        r.seen += seen
        r.added += added
        r.updated += updated
        r.skipped += skipped
        r.failed += len(errors)
