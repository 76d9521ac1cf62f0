"""Dynamic batching of encoder calls from concurrent requests.

A model forward on a batch of 32 costs far less than 32 forwards of one, so requests that arrive close
together share one call. Each `Batcher` owns a worker thread: it takes the oldest waiting input, then
keeps collecting until it has `max_batch` inputs or the oldest has waited `max_wait_ms`, runs the batch
function once, and hands each caller its own rows. While a batch runs the next one fills up, so under
load batches leave full and nobody waits for the timer.

The window only opens under concurrent load: when the previous batch held a single input and only one
input is waiting, it runs at once, so a lone client never pays `max_wait_ms` (adaptive=False always waits).

If a batch call raises, its inputs are retried one by one, so one caller's bad input fails only that
caller. A caller whose deadline passes stops waiting; inputs nobody waits for any more are dropped
before they reach the model.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Sequence

import numpy as np

from mmsearch.errors import DeadlineExceeded, Unavailable

log = logging.getLogger("mmsearch.batching")


class BatcherClosed(Unavailable):
    """The batcher was closed (server shutting down)."""


class Batcher:
    """Collects single inputs from many threads into calls of `fn(list_of_inputs) -> rows`.

    `fn` must return one row per input, in order (a sequence or an array indexed by row). `on_batch(inputs,
    seconds)`, when given, is called after each batch the model ran (metrics).
    """

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any] | np.ndarray], *, max_batch: int = 32,
                 max_wait_ms: float = 2.0, name: str = "batcher", adaptive: bool = True,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"{name}: max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"{name}: max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.name = name
        self.adaptive = adaptive
        self.on_batch = on_batch
        self._last_batch = 1
        self._queue: collections.deque[tuple[float, Any, Future]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0          # statistics, for tests and benchmarks
        self.batched_inputs = 0
        self.busy_s = 0.0         # time spent in fn
        self._worker = threading.Thread(target=self._run, name=f"{name}-worker", daemon=True)
        self._worker.start()

    def submit(self, item: Any) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"{self.name} is closed")
            self._queue.append((time.monotonic(), item, future))
            self._cond.notify()
        return future

    def map(self, items: Sequence[Any], timeout: float | None = None) -> list[Any]:
        """Submit every item and wait for all rows; `timeout` is the caller's remaining deadline (s)."""
        futures = [self.submit(item) for item in items]
        if timeout is not None and timeout >= threading.TIMEOUT_MAX:
            timeout = None  # "no deadline" from a client can arrive as ~1e300 s; waits cannot take that
        end = None if timeout is None else time.monotonic() + timeout
        rows = []
        try:
            for future in futures:
                remaining = None if end is None else max(0.0, end - time.monotonic())
                rows.append(future.result(remaining))
        except FutureTimeout:
            raise DeadlineExceeded(f"{self.name}: deadline passed after {timeout:.3f}s waiting for the model") from None
        except CancelledError:
            raise BatcherClosed(f"{self.name} closed while the request waited") from None
        finally:
            for future in futures:
                future.cancel()  # no-op for finished ones; drops the rest before they reach the model
        return rows

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()

    # -- worker -----------------------------------------------------------------------------------

    def _next_batch(self) -> list[tuple[Any, Future]] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            oldest = self._queue[0][0]
            lone = self.adaptive and self._last_batch == 1 and len(self._queue) == 1
            while not lone and len(self._queue) < self.max_batch and not self._closed:
                left = oldest + self.max_wait - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                _, item, future = self._queue.popleft()
                if future.set_running_or_notify_cancel():  # False: the caller gave up
                    batch.append((item, future))
            self._last_batch = max(len(batch), 1)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._call(batch)

    def _call(self, batch: list[tuple[Any, Future]]) -> None:
        items = [item for item, _ in batch]
        started = time.perf_counter()
        try:
            rows = self.fn(items)
            if len(rows) != len(items):
                raise RuntimeError(f"{self.name}: batch function returned {len(rows)} rows for {len(items)} inputs")
        except BaseException as exc:  # noqa: BLE001 - isolate the failing input(s)
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            for item, future in batch:
                try:
                    future.set_result(self.fn([item])[0])
                except BaseException as single_exc:  # noqa: BLE001
                    future.set_exception(single_exc)
            return
        seconds = time.perf_counter() - started
        self.batches += 1
        self.batched_inputs += len(items)
        self.busy_s += seconds
        for (_, future), row in zip(batch, rows):
            future.set_result(row)
        if self.on_batch is not None:
            try:
                self.on_batch(len(items), seconds)
            except Exception:  # noqa: BLE001 - a metrics hook must never stop the worker
                log.exception("%s: on_batch hook failed", self.name)


class BatchedEncoder:
    """A DualEncoder whose encode_texts / encode_images go through batchers shared by all callers.

    With `enabled=False` calls go straight to the model in the caller's thread (the benchmark's baseline).
    Everything else (name, family, dim, digest, ...) is the wrapped encoder's. `on_batch(model, kind, inputs,
    seconds)` is called after each batch (kind "text" or "image").
    """

    def __init__(self, encoder, *, max_batch: int = 32, max_wait_ms: float = 2.0, enabled: bool = True,
                 on_batch: Callable[[str, str, int, float], None] | None = None):
        self.encoder = encoder
        self.enabled = enabled
        self._retired = False
        self._texts = self._images = None
        params = _parameter_count(encoder)
        self._text_call = _sized_calls(encoder.encode_texts, params, TOKENS_PER_TEXT)
        self._image_call = _sized_calls(encoder.encode_images, params, PATCHES_PER_IMAGE)
        if enabled:
            label = getattr(encoder, "name", "encoder")

            def hook(kind: str):
                return None if on_batch is None else (lambda n, seconds: on_batch(label, kind, n, seconds))
            self._texts = Batcher(self._text_call, max_batch=max_batch, max_wait_ms=max_wait_ms, name=f"{label} texts",
                                  on_batch=hook("text"))
            self._images = Batcher(self._image_call, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                   name=f"{label} images", on_batch=hook("image"))

    def __getattr__(self, attr):
        return getattr(self.encoder, attr)

    def _encode(self, batcher: Batcher | None, direct, inputs: Sequence[Any], timeout: float | None) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        if batcher is None or self._retired:
            return direct(list(inputs))
        try:
            return np.stack(batcher.map(inputs, timeout)).astype(np.float32, copy=False)
        except BatcherClosed:
            if not self._retired:
                raise
            return direct(list(inputs))  # retired while this call waited: finish it without the batcher

    def encode_texts(self, texts: Sequence[str], timeout: float | None = None) -> np.ndarray:
        return self._encode(self._texts, self._text_call, texts, timeout)

    def encode_images(self, images: Sequence[Any], timeout: float | None = None) -> np.ndarray:
        return self._encode(self._images, self._image_call, images, timeout)

    @property
    def stats(self) -> dict[str, float]:
        if not self.enabled:
            return {}
        return {f"{kind}_{stat}": value for kind, batcher in (("text", self._texts), ("image", self._images))
                for stat, value in (("batches", batcher.batches), ("inputs", batcher.batched_inputs),
                                    ("busy_s", batcher.busy_s))}

    def close(self) -> None:
        """Stop the batchers; later calls fail with BatcherClosed (the server is shutting down)."""
        for batcher in (self._texts, self._images):
            if batcher is not None:
                batcher.close()

    def retire(self) -> None:
        """Stop the batchers but keep answering, on direct calls: the model was unloaded from the registry
        while requests may still hold it; its memory goes with the last of them."""
        self._retired = True
        self.close()


# A model call whose work is below this runs on the calling thread alone. Splitting a small forward over
# an OpenMP team buys little on a quiet machine and costs a lot on a busy one: every parallel region then
# waits for a descheduled team thread (measured here with a tiny SigLIP under load: p99 118 ms on two
# threads against 4.7 ms on one). OpenMP's thread count is per calling thread, so this leaves other
# threads' calls alone.
SMALL_CALL_FLOPS = 2e8
TOKENS_PER_TEXT = 64      # rough sizes for the estimate: a padded text, a 224 px image in 16 px patches
PATCHES_PER_IMAGE = 196


def _parameter_count(encoder) -> int | None:
    model = getattr(encoder, "model", None)
    try:
        return sum(p.numel() for p in model.parameters()) if model is not None else None
    except (AttributeError, TypeError):
        return None


def _sized_calls(fn: Callable[[list], Any], params: int | None, units_per_input: int) -> Callable[[list], Any]:
    """`fn` run on one intra-op thread when 2 x params x units x inputs (the forward's FLOPs, roughly) is small."""
    if params is None:
        return lambda inputs: fn(list(inputs))

    def call(inputs):
        inputs = list(inputs)
        if 2 * params * units_per_input * len(inputs) >= SMALL_CALL_FLOPS:
            return fn(inputs)
        import torch

        before = torch.get_num_threads()
        if before == 1:
            return fn(inputs)
        torch.set_num_threads(1)
        try:
            return fn(inputs)
        finally:
            torch.set_num_threads(before)
    return call
