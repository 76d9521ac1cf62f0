"""The one ingest path: one source item -> a checked, hashed, decoded record ready to encode and write.

    from indexer.ingest import Ingest, SourceItem
    ingest = Ingest(max_bytes=256 << 20, max_pixels=100_000_000, draft_size=enc.image_preprocessor.draft_size,
                    preprocessor=enc.image_preprocessor)            # roots=None: the operator's own job
    record = ingest(SourceItem(uri="/data/a.jpg", path="/data/a.jpg", meta={"tag": "x"}))  # or MMSearchError
    record.pixels, record.sha256, record.width, record.height, record.thumbnail   # -> encode -> write
    store_thumbnail(store.media_dir, record)                       # before the catalog commit

The local bulk job (indexer/jobs.py, in its decode processes), the Ray job (indexer/ray_job.py, in Ray Data
tasks) and Upsert (search/service.py, for gRPC and HTTP alike) all go through here, so an item means the same
whichever way it arrived: the same metadata checks, the same sha256 over the same bytes, the same uri rule
(`sha256:<hex>` for bytes without one), the same original size (after EXIF rotation), the same thumbnail.

A server reads files only under its image roots (`roots`, through indexer/files.py: no links followed, no
FIFOs) and never fetches a remote uri; the operator's job (`roots=None`) reads any path it was given, and
http(s):// / s3:// / other fsspec uris through indexer/remote.py (the remote uri is what is stored). A
server decodes under its pixel budget (search/limits.py) and hands each image to `finish`; a job calls the
whole thing, `ingest(item)`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from indexer.remote import remote_protocol
from mmsearch.errors import InvalidInput, TooLarge

MAX_META_KEY = 128
MAX_META_BYTES = 64 * 1024
CAPTION_THUMB = 512  # images handed to the captioner are at most this many pixels on a side


@dataclass
class SourceItem:
    """One input: a file path or the bytes themselves, its uri, metadata, caption, or the reason it is unusable
    (found while listing)."""

    uri: str
    path: str | None = None
    data: bytes | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None
    caption: str | None = None


@dataclass
class Read:
    """An item's bytes, read and hashed, with its checked metadata: what is left to do is decode."""

    uri: str
    sha256: str
    data: bytes
    meta: dict
    caption: str | None
    uploaded: bool  # the bytes came with the request (a server keeps a copy), not from a file


@dataclass
class Record:
    """A decoded item on its way to the encoder and the catalog."""

    uri: str
    sha256: str
    width: int  # of the original, after EXIF rotation (draft decoding shrinks the decoded image)
    height: int
    meta: dict
    caption: str | None = None
    pixels: np.ndarray | None = None  # (3, H, W) float32, when the Ingest has a preprocessor
    image: object = None  # the decoded RGB PIL image when kept (keep_image), else None
    thumbnail: bytes | None = None  # WebP for the page (indexer/thumbnails.py), when thumbnails are made
    vector: np.ndarray | None = None  # set by the encoder stage


def check_meta(meta) -> str | None:
    """None when `meta` is acceptable item metadata, else the reason it is not."""
    if not isinstance(meta, dict):
        return f"metadata must be a JSON object, got {type(meta).__name__}"
    for key in meta:
        if not isinstance(key, str) or not key or len(key) > MAX_META_KEY:
            return f"metadata key {key!r} must be a string of 1-{MAX_META_KEY} characters"
    try:
        size = len(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        return f"metadata is not JSON-serialisable ({exc})"
    if size > MAX_META_BYTES:
        return f"metadata is {size} bytes as JSON (limit {MAX_META_BYTES})"
    return None


@dataclass
class Ingest:
    """How items are read and decoded. Plain data, so it pickles into worker processes and Ray tasks.

    `roots`: None reads any path (the operator's own job); a list (normalize_roots) only paths under it,
    and [] no paths at all (a server without image roots). `draft_size`: what JPEGs may be draft-decoded
    down to (the preprocessor's; None decodes in full). `keep_image`: keep the decoded image on the record
    (for an encoder that takes images, or the captioner, shrunk to CAPTION_THUMB when `caption_size`)."""

    max_bytes: int
    max_pixels: int | None
    roots: list[str] | None = None
    draft_size: tuple[int, int] | None = None
    preprocessor: object = None
    thumbnails: bool = True
    keep_image: bool = False
    caption_size: bool = False
    remote_timeout_s: float = 60.0  # per request, for an http(s):// / s3:// ... uri (indexer/remote.py)

    def __call__(self, item: SourceItem) -> Record:
        """Read, hash, check, decode and preprocess one item; MMSearchError (or OSError) saying why not."""
        from encoders.preprocess import load_image

        read = self.read(item)
        image = load_image(read.data, max_pixels=self.max_pixels, draft_size=self.draft_size)
        return self.finish(read, image)

    def read(self, item: SourceItem) -> Read:
        """The item's bytes (given, or read from its path), hashed, with its metadata checked."""
        if item.error:
            raise InvalidInput(item.error)
        problem = check_meta(item.meta)
        if problem:
            raise InvalidInput(problem)
        uri = item.uri
        if item.data is not None:
            data = bytes(item.data)
            if len(data) > self.max_bytes:
                from indexer.files import mib

                raise TooLarge(f"image is {len(data)} bytes, over the {mib(self.max_bytes)} limit")
        else:
            path = item.path or item.uri
            if not path:
                raise InvalidInput("item needs image bytes or a uri")
            path = path[len("file://"):] if path.startswith("file://") else path
            if remote_protocol(path):
                data = self._read_remote(path)
                uri = uri or path  # the remote uri itself is stored
            else:
                data = self._read_file(path)
                uri = uri if item.path else os.path.normpath(path)  # a server path given as uri is stored normalised
        sha = hashlib.sha256(data).hexdigest()
        return Read(uri=uri or f"sha256:{sha}", sha256=sha, data=data, meta=item.meta, caption=item.caption or None,
                    uploaded=item.data is not None)

    def _read_remote(self, uri: str) -> bytes:
        from indexer.remote import read_remote

        if self.roots is not None:  # a server: fetching what a client names would be SSRF
            raise InvalidInput(f"{uri}: this server does not fetch remote uris (only `mmsearch index` jobs "
                               "read them); send the image bytes instead")
        return read_remote(uri, max_bytes=self.max_bytes, timeout_s=self.remote_timeout_s)

    def _read_file(self, path: str) -> bytes:
        from indexer.files import read_file

        if self.roots is not None and not self.roots:
            raise InvalidInput("this server reads no files by uri (no image_roots configured); "
                               "send the image bytes instead")
        return read_file(path, max_bytes=self.max_bytes, roots=self.roots)

    def finish(self, read: Read, image) -> Record:
        """The record of `read` once decoded to `image` (an RGB PIL image): size, pixels, thumbnail."""
        width, height = original_size(read.data, image)
        record = Record(uri=read.uri, sha256=read.sha256, width=width, height=height, meta=read.meta,
                        caption=read.caption)
        if self.preprocessor is not None:
            record.pixels = self.preprocessor([image])[0].numpy()
        if self.thumbnails:
            record.thumbnail = self._thumbnail(read.data, image, (width, height))
        if self.keep_image:
            if self.caption_size:
                image = image.copy()
                image.thumbnail((CAPTION_THUMB, CAPTION_THUMB))
            record.image = image
        return record

    def _thumbnail(self, data: bytes, image, size: tuple[int, int]) -> bytes:
        from indexer.thumbnails import THUMB_SIZE, make_thumbnail

        if max(image.size) < min(THUMB_SIZE, max(size)):  # draft-decoded below the thumbnail: decode for it
            from encoders.preprocess import load_image

            image = load_image(data, max_pixels=self.max_pixels, draft_size=(THUMB_SIZE, THUMB_SIZE))
        return make_thumbnail(image)


def store_thumbnail(media_dir: str, record: Record) -> None:
    """Write the record's thumbnail under `media_dir` (kept when one for the same content is there)."""
    if record.thumbnail is not None:
        from indexer.thumbnails import write_thumbnail

        write_thumbnail(media_dir, record.sha256, record.thumbnail)
        record.thumbnail = None


def original_size(data: bytes, decoded) -> tuple[int, int]:
    """Width and height of the full-resolution image after EXIF rotation (draft decoding shrinks `decoded`)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if im.format != "JPEG" or decoded.size in ((w, h), (h, w)):
            return decoded.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def failure_reason(exc: BaseException, item: SourceItem) -> str:
    """What a job records for an item that could not be ingested: the message without the path or
    'image bytes' label (the error row names the uri already)."""
    from mmsearch.errors import MMSearchError

    if isinstance(exc, MMSearchError):
        message = str(exc)
        for label in ("image bytes", item.path or "", item.uri or ""):
            if label and message.startswith(label + ": "):
                message = message[len(label) + 2:]
        return message
    if isinstance(exc, OSError):
        return f"unreadable ({exc.strerror or exc})"
    return f"decoder failed ({type(exc).__name__}: {exc})"  # a decoder bug on one file must not stop the job
