"""search.batching: concurrent callers share model calls, each gets its own rows, failures stay isolated."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mmsearch.errors import DeadlineExceeded
from search.batching import BatchedEncoder, Batcher, BatcherClosed


class Recorder:
    """A batch function that doubles numbers and records each batch it was given."""

    def __init__(self, delay: float = 0.0, bad=None):
        self.delay = delay
        self.bad = bad
        self.batches: list[list] = []
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.delay)
        if self.bad is not None and self.bad in items:
            raise ValueError(f"bad input {self.bad!r}")
        return [x * 2 for x in items]


def test_concurrent_callers_get_their_own_rows_in_shared_batches():
    fn = Recorder(delay=0.01)
    batcher = Batcher(fn, max_batch=8, max_wait_ms=20)
    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda i: batcher.map([i, i + 1000]), range(64)))
    finally:
        batcher.close()
    assert results == [[2 * i, 2 * (i + 1000)] for i in range(64)]
    sizes = [len(b) for b in fn.batches]
    assert sum(sizes) == 128
    assert max(sizes) <= 8
    assert len(fn.batches) < 128 / 2, f"no batching happened: {sizes}"
    assert batcher.batched_inputs == 128


def test_lone_input_waits_at_most_max_wait():
    fn = Recorder()
    batcher = Batcher(fn, max_batch=64, max_wait_ms=30, adaptive=False)
    try:
        start = time.monotonic()
        assert batcher.map([21]) == [42]
        elapsed = time.monotonic() - start
    finally:
        batcher.close()
    assert 0.025 <= elapsed < 0.5, elapsed


def test_adaptive_window_opens_only_under_concurrency():
    fn = Recorder()
    batcher = Batcher(fn, max_batch=64, max_wait_ms=200)
    try:
        start = time.monotonic()
        assert batcher.map([1]) == [2]  # idle server, lone caller: no wait
        assert batcher.map([2]) == [4]
        assert time.monotonic() - start < 0.15
        assert batcher.map([1, 2]) == [2, 4]  # two inputs at once: the window is used
        start = time.monotonic()
        assert batcher.map([3]) == [6]  # right after a multi-input batch: waits for company
        assert time.monotonic() - start >= 0.15
    finally:
        batcher.close()


def test_full_batch_leaves_without_waiting_for_the_timer():
    fn = Recorder()
    batcher = Batcher(fn, max_batch=4, max_wait_ms=5000)
    try:
        start = time.monotonic()
        assert batcher.map([1, 2, 3, 4]) == [2, 4, 6, 8]
        assert time.monotonic() - start < 1.0
    finally:
        batcher.close()


def test_a_bad_input_fails_only_its_caller():
    fn = Recorder(delay=0.02, bad=13)
    batcher = Batcher(fn, max_batch=16, max_wait_ms=50)
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = {i: pool.submit(batcher.map, [i]) for i in range(10, 18)}
            outcomes = {}
            for i, fut in futures.items():
                try:
                    outcomes[i] = fut.result()
                except ValueError as exc:
                    outcomes[i] = str(exc)
    finally:
        batcher.close()
    assert outcomes[13] == "bad input 13"
    assert all(outcomes[i] == [2 * i] for i in futures if i != 13)


def test_deadline_stops_waiting_and_drops_the_inputs():
    fn = Recorder(delay=0.3)
    batcher = Batcher(fn, max_batch=1, max_wait_ms=0)
    try:
        blocker = threading.Thread(target=batcher.map, args=([1],))
        blocker.start()
        time.sleep(0.05)  # the worker is now busy with [1] for 0.3 s
        with pytest.raises(DeadlineExceeded, match="deadline"):
            batcher.map([2, 3], timeout=0.05)
        blocker.join()
        time.sleep(0.05)
    finally:
        batcher.close()
    assert [1] in fn.batches
    assert [2] not in fn.batches and [3] not in fn.batches, fn.batches


def test_close_finishes_queued_work_then_refuses():
    fn = Recorder(delay=0.01)
    batcher = Batcher(fn, max_batch=2, max_wait_ms=1000)
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close()
    assert [f.result(timeout=1) for f in futures] == [0, 2, 4, 6, 8]
    with pytest.raises(BatcherClosed):
        batcher.submit(1)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(lambda xs: xs, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Batcher(lambda xs: xs, max_wait_ms=-1)


def test_batched_encoder_matches_the_model(tiny_siglip_dir):
    import encoders

    enc = encoders.load(tiny_siglip_dir)
    texts = [f"a photo of {i} cats" for i in range(12)]
    direct = enc.encode_texts(texts)
    batched = BatchedEncoder(enc, max_batch=4, max_wait_ms=20)
    try:
        with ThreadPoolExecutor(6) as pool:
            rows = list(pool.map(lambda t: batched.encode_texts([t])[0], texts))
        assert batched.dim == enc.dim and batched.name == enc.name
        stats = batched.stats
        assert stats["text_inputs"] == len(texts) and 3 <= stats["text_batches"] < len(texts)
        assert stats["text_busy_s"] > 0 and stats["image_batches"] == stats["image_busy_s"] == 0
    finally:
        batched.close()
    np.testing.assert_allclose(np.stack(rows), direct, atol=1e-5)
    unbatched = BatchedEncoder(enc, enabled=False)
    np.testing.assert_allclose(unbatched.encode_texts(texts[:3]), direct[:3], atol=1e-6)
    assert unbatched.encode_texts([]).shape == (0, enc.dim)


def test_small_model_calls_run_on_one_thread_large_ones_on_all():
    import torch

    class Recording:
        name, dim = "recording", 2

        def __init__(self, params: int):
            self.model = torch.nn.Linear(params, 1, bias=False)
            self.threads: list[int] = []

        def encode_texts(self, texts):
            self.threads.append(torch.get_num_threads())
            return np.zeros((len(texts), 2), np.float32)

        encode_images = encode_texts

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small, large = Recording(1_000), Recording(10_000_000)
        for enc in (small, large):
            for enabled in (True, False):
                batched = BatchedEncoder(enc, enabled=enabled)
                batched.encode_texts(["a"])
                batched.encode_images(["b"])
                batched.close()
        assert small.threads == [1, 1, 1, 1] and large.threads == [2, 2, 2, 2]
        assert torch.get_num_threads() == 2  # restored after the small calls
    finally:
        torch.set_num_threads(before)
