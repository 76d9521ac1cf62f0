"""Bounds on what requests may hold in memory: decoded pixels, per request and for the whole server.

A few kilobytes on the wire can decode to gigabytes (a 36 MP one-bit PNG is 27 KB and 108 MB as RGB), so
images are decoded lazily, in chunks, under a pixel budget shared by every request:

    budget = PixelBudget(400e6)
    for chunk in decode_chunks(blobs, budget=budget, chunk_pixels=100e6, chunk_count=32, deadline=deadline):
        vectors = encoder.encode_images([image for _, image in chunk])   # chunk: [(position, image)]
    # each chunk's pixels are given back when the next chunk is asked for, or the loop ends

A request waits for room until its deadline and then fails with Busy (RESOURCE_EXHAUSTED); a single image
larger than the whole budget fails at once with TooLarge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

from mmsearch.errors import Busy, ImageError, TooLarge


class PixelBudget:
    """A counting semaphore over decoded pixels."""

    def __init__(self, total_pixels: float):
        self.total = int(total_pixels)
        self.used = 0
        self.peak = 0  # statistics: the most held at once
        self._cond = threading.Condition()

    def acquire(self, pixels: int, deadline: float | None, what: str) -> None:
        if pixels > self.total:
            raise TooLarge(f"{what}: {pixels / 1e6:.1f} MP decoded is more than this server holds at once "
                           f"({self.total / 1e6:.0f} MP); send a smaller image")
        if deadline is not None:  # give up a little early, so the refusal reaches the client before its deadline
            deadline -= min(0.25, 0.1 * max(0.0, deadline - time.monotonic()))
        with self._cond:
            while self.used + pixels > self.total:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Busy(f"{what}: the server is decoding {self.used / 1e6:.0f} MP of other requests' "
                               f"images (budget {self.total / 1e6:.0f} MP); retry later")
                self._cond.wait(left)
            self.used += pixels
            self.peak = max(self.peak, self.used)

    def release(self, pixels: int) -> None:
        with self._cond:
            self.used -= pixels
            self._cond.notify_all()


def decode_chunks(blobs: Iterable[tuple[int, bytes]], *, budget: PixelBudget | None, chunk_pixels: float,
                  chunk_count: int, deadline: float | None, max_image_pixels: int | None,
                  label: Callable[[int], str] = lambda i: f"images[{i}]", draft_size=None,
                  on_error: Callable[[int, Exception], None] | None = None) -> Iterator[list]:
    """Decode (position, bytes) pairs into chunks of [(position, RGB image)] of at most `chunk_count`
    images and (unless a single image is larger) `chunk_pixels` pixels, each reserved from `budget` while
    the chunk is in use. A bad image raises ImageError / TooLarge labelled with `label(position)`, or is
    handed to `on_error` (and skipped) when given."""
    from encoders.preprocess import image_size, load_image

    chunk: list = []
    held = 0
    try:
        for position, data in blobs:
            try:
                width, height = image_size(data)
                pixels = width * height
                if max_image_pixels is not None and pixels > max_image_pixels:
                    raise TooLarge(f"{width}x{height} = {pixels / 1e6:.0f} MP exceeds the limit of "
                                   f"{max_image_pixels / 1e6:.0f} MP (possible decompression bomb)")
            except (ImageError, TooLarge) as exc:
                error = type(exc)(f"{label(position)}: {exc}")
                if on_error is None:
                    raise error from None
                on_error(position, error)
                continue
            if chunk and (held + pixels > chunk_pixels or len(chunk) >= chunk_count):
                yield chunk
                chunk = []
                if budget is not None:
                    budget.release(held)
                held = 0
            if budget is not None:
                budget.acquire(pixels, deadline, label(position))
            held += pixels
            try:
                image = load_image(data, max_pixels=max_image_pixels, draft_size=draft_size)
            except (ImageError, TooLarge) as exc:
                message = str(exc)
                message = message.split(": ", 1)[1] if message.startswith("image bytes: ") else message
                error = type(exc)(f"{label(position)}: {message}")
                if on_error is None:
                    raise error from None
                on_error(position, error)
                continue
            chunk.append((position, image))
        if chunk:
            yield chunk
    finally:
        chunk = []
        if budget is not None and held:
            budget.release(held)
