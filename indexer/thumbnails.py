"""Thumbnails: small WebP images keyed by content hash, written at ingest time, served by the web page.

    path = thumbnail_path(data_dir, sha256)            # DATA_DIR/thumbs/ab/<sha256>.webp
    data = make_thumbnail(image)                       # PIL image -> WebP bytes, longest side THUMB_SIZE
    write_thumbnail(data_dir, sha256, data)            # atomic (temp file + rename); kept if already there
    path = ensure_thumbnail(data_dir, sha256, [uri, kept_copy], roots=...)   # re-create a missing one, or None

Items with the same content share one file. A thumbnail is a cache: a missing one is made again from the
original when the original is readable and still has the item's content (same sha256); otherwise
`ensure_thumbnail` returns None and the page shows a placeholder.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterable, Sequence

from mmsearch.errors import InvalidInput, MMSearchError

THUMB_SIZE = 256  # longest side, pixels
THUMB_QUALITY = 70  # WebP quality: ~5-12 KB for a photo at 256 px
THUMB_SUFFIX = ".webp"
_SHA = re.compile(r"[0-9a-f]{64}")


def thumbnail_path(data_dir: str | os.PathLike, sha256: str) -> str:
    """Where the thumbnail of content `sha256` lives (whether or not it exists yet)."""
    if not isinstance(sha256, str) or not _SHA.fullmatch(sha256):
        raise InvalidInput(f"not a sha256 hex digest: {str(sha256)[:80]!r}")  # never a path from a request
    return os.path.join(os.fspath(data_dir), "thumbs", sha256[:2], sha256 + THUMB_SUFFIX)


def make_thumbnail(image, size: int = THUMB_SIZE) -> bytes:
    """An RGB PIL image -> WebP bytes with the longest side at most `size` (never enlarged)."""
    from PIL import Image

    thumb = image.convert("RGB") if image.mode != "RGB" else image.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    thumb.save(buf, format="WEBP", quality=THUMB_QUALITY, method=4)
    return buf.getvalue()


def write_thumbnail(data_dir: str | os.PathLike, sha256: str, data: bytes) -> str:
    """Store `data` as the thumbnail of `sha256` unless one is already there; atomic, so a reader (or a
    crash) never sees half a file. Returns its path."""
    path = thumbnail_path(data_dir, sha256)
    if os.path.exists(path):
        return path
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=THUMB_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def ensure_thumbnail(data_dir: str | os.PathLike, sha256: str, originals: Iterable[str], *,
                     roots: Sequence[str] | None = None, max_bytes: int = 256 << 20) -> str | None:
    """The thumbnail's path, re-created from the first of `originals` (local paths) that can be read
    (under `roots`, when given) and still holds content `sha256`; None when none can (show a placeholder)."""
    path = thumbnail_path(data_dir, sha256)
    if os.path.exists(path):
        return path
    from encoders.preprocess import load_image
    from indexer.files import read_file

    for original in originals:
        if not original:
            continue
        original = original[len("file://"):] if original.startswith("file://") else original
        if not os.path.isabs(original):
            continue
        try:
            data = read_file(original, max_bytes=max_bytes, roots=roots)
            if hashlib.sha256(data).hexdigest() != sha256:
                continue  # the file changed since it was indexed: its picture is not this item's
            image = load_image(data, draft_size=(THUMB_SIZE, THUMB_SIZE))
        except MMSearchError:
            continue
        return write_thumbnail(data_dir, sha256, make_thumbnail(image))
    return None
