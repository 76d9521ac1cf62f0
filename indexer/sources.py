"""What a bulk job reads: folders, manifests (CSV / JSONL), and Python iterables of (path or bytes, metadata).

Everything becomes a stream of `SourceItem`s. Listing never opens more than a file's first bytes, so a job
over millions of files starts at once and keeps memory flat. Problems found while listing (a dangling
symlink, an unreadable file, a bad manifest line) become items with `error` set; the job records them and
goes on. Problems with the request itself (a path that does not exist, a manifest without a uri column)
raise InvalidInput before anything runs.

Folders are walked recursively in sorted order (symlinked folders are not followed). A regular file is an
image candidate when its first bytes carry a known image signature or its name has an image extension,
so `IMG_0001` without an extension is found and `notes.txt` is not; `broken.jpg` is tried and its decode
error recorded.

Manifests: `.csv` (header row) or `.jsonl` / `.ndjson` (one JSON object per line). The `uri` column (also
accepted: `path`, `file`, `filename`, `image`) names the image; relative paths are resolved against the
manifest's folder; `file://` is accepted; an http(s)://, s3:// or other fsspec uri (in a manifest or as a
path argument) names one remote image, read by the job (indexer/remote.py) and stored under that uri. Every other column becomes item metadata; CSV cells that look
like numbers are stored as numbers and empty cells are left out.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator

from indexer.ingest import SourceItem, check_meta
from indexer.remote import remote_protocol
from mmsearch.errors import InvalidInput

IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png gif bmp dib tif tiff webp ico jp2 j2k jpf jpx ppm pgm pbm pnm pfm tga psd avif "
    "heic heif qoi dds pcx sgi rgb icns".split())
MANIFEST_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
URI_COLUMNS = ("uri", "path", "file", "filename", "image")

_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
               b"\x00\x00\x01\x00", b"\x00\x00\x00\x0cjP  \r\n", b"\xffO\xffQ", b"8BPS", b"qoif", b"DDS ",
               b"icns")
_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")


def looks_like_image(head: bytes) -> bool:
    if any(head.startswith(sig) for sig in _SIGNATURES):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
        return True
    return len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567f" and head[2:3] in b" \t\r\n"


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower().lstrip(".") in IMAGE_EXTENSIONS


def check_paths(paths: Iterable[str]) -> list[str]:
    """Validate the command-line inputs up front (they must exist); returns them as absolute paths."""
    out = []
    for p in paths:
        if not isinstance(p, str) or not p:
            raise InvalidInput("index: empty path")
        if remote_protocol(p):  # one remote image, read by the job like a manifest's remote rows
            out.append(p)
            continue
        if not os.path.lexists(p):
            raise InvalidInput(f"index: {p}: no such file or folder")
        if os.path.isfile(p) and manifest_kind(p):
            manifest_uri_column(p)  # a manifest we cannot use is a usage error, not a per-item error
        out.append(os.path.abspath(p))
    if not out:
        raise InvalidInput("index: give at least one folder, image file or manifest")
    return out


def manifest_kind(path: str) -> str | None:
    return MANIFEST_EXTENSIONS.get(os.path.splitext(path)[1].lower())


def iter_paths(paths: Iterable[str]) -> Iterator[SourceItem]:
    """Items from folders, single files and manifests, in the order given."""
    for p in paths:
        if remote_protocol(p):
            yield SourceItem(uri=p, path=p)
        elif os.path.isdir(p):
            yield from iter_folder(p)
        elif os.path.isfile(p) and manifest_kind(p):
            yield from iter_manifest(p)
        else:
            yield _file_item(os.path.abspath(p), explicit=True)


def count_paths(paths: Iterable[str]) -> int:
    """How many items iter_paths will yield (a cheap second listing, for the progress bar)."""
    return sum(1 for _ in iter_paths(paths))


def iter_folder(root: str) -> Iterator[SourceItem]:
    root = os.path.abspath(root)
    unreadable: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable.append, followlinks=False):
        while unreadable:  # a sub-folder os.walk could not list
            exc = unreadable.pop()
            yield SourceItem(uri=exc.filename or dirpath, error=f"cannot list folder ({exc.strerror or exc})")
        dirnames.sort()
        for name in sorted(filenames):
            item = _file_item(os.path.join(dirpath, name), explicit=False)
            if item is not None:
                yield item
    for exc in unreadable:
        yield SourceItem(uri=exc.filename or root, error=f"cannot list folder ({exc.strerror or exc})")


def _file_item(path: str, *, explicit: bool) -> SourceItem | None:
    """A folder entry (or a file named on the command line) as an item, or None when it is not an image."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return SourceItem(uri=path, error="dangling symbolic link")
        return SourceItem(uri=path, error="no such file") if explicit else None
    except OSError as exc:
        return SourceItem(uri=path, error=f"cannot stat ({exc.strerror or exc})")
    if not stat.S_ISREG(st.st_mode):
        return SourceItem(uri=path, error="not a regular file") if explicit else None
    if explicit or has_image_extension(path):
        return SourceItem(uri=path, path=path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return SourceItem(uri=path, error=f"unreadable ({exc.strerror or exc})")
    return SourceItem(uri=path, path=path) if looks_like_image(head) else None


# ---- manifests ----------------------------------------------------------------------------------------------


def manifest_uri_column(path: str) -> str:
    kind = manifest_kind(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            if kind == "csv":
                header = next(csv.reader(fh), None)
                columns = [c.strip() for c in header or []]
            else:
                columns = []
                for line in fh:
                    if line.strip():
                        try:
                            first = json.loads(line)
                        except ValueError as exc:
                            raise InvalidInput(f"{path}: line 1 is not JSON ({exc})") from None
                        columns = list(first) if isinstance(first, dict) else []
                        break
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read manifest ({exc})") from None
    for name in URI_COLUMNS:
        if name in columns:
            return name
    raise InvalidInput(f"{path}: manifest has no uri column (one of {', '.join(URI_COLUMNS)}); "
                       f"columns: {', '.join(map(str, columns)) or 'none'}")


def iter_manifest(path: str) -> Iterator[SourceItem]:
    path = os.path.abspath(path)
    base = os.path.dirname(path)
    for where, uri, meta, error in manifest_rows(path):
        if error:
            yield SourceItem(uri=where, error=error)
        else:
            yield _manifest_item(where, base, uri, meta)


def manifest_rows(path: str) -> Iterator[tuple[str, object, dict, str | None]]:
    """Each row of a manifest as (where: "FILE:LINE", its uri cell as found, the other cells as metadata,
    the reason the row is unusable or None). Shared by `index` (the uri names an image file) and `import`
    (the uri is a label beside a vector)."""
    path = os.path.abspath(path)
    column = manifest_uri_column(path)
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        if manifest_kind(path) == "csv":
            reader = csv.DictReader(fh)
            for lineno, row in enumerate(reader, start=2):
                row = {(k or "").strip(): v for k, v in row.items() if k is not None}
                meta = {k: _csv_value(v) for k, v in row.items() if k != column and v not in (None, "")}
                yield f"{path}:{lineno}", row.get(column), meta, None
        else:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    yield where, None, {}, f"manifest line is not JSON ({exc})"
                    continue
                if not isinstance(obj, dict):
                    yield where, None, {}, "manifest line is not a JSON object"
                    continue
                uri = obj.pop(column, None)
                yield where, uri, obj, None


def _manifest_item(where: str, base: str, uri, meta: dict) -> SourceItem:
    if not isinstance(uri, str) or not uri.strip():
        return SourceItem(uri=where, error="manifest row has no uri")
    uri = uri.strip()
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    remote = remote_protocol(uri) is not None
    full = uri if remote else os.path.normpath(os.path.join(base, os.path.expanduser(uri)))
    problem = check_meta(meta)
    if problem:
        return SourceItem(uri=full, error=f"{where}: {problem}")
    if remote:  # read (through fsspec) by whichever worker decodes it, not while listing
        return SourceItem(uri=full, path=full, meta=meta)
    item = _file_item(full, explicit=True)
    item.meta = meta
    return item


def _csv_value(text: str):
    text = text.strip()
    if _NUMBER.fullmatch(text):
        value = float(text)
        return int(text) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    return text


# ---- Python API -----------------------------------------------------------------------------------------------


def iter_objects(objects: Iterable) -> Iterator[SourceItem]:
    """Items from (path or bytes, metadata) pairs; a bare path or bytes works too. Metadata may carry a
    "uri" key naming a bytes item; otherwise bytes are named "sha256:<hex>" once hashed."""
    for n, obj in enumerate(objects):
        source, meta = (obj if isinstance(obj, tuple) and len(obj) == 2 else (obj, None))
        meta = dict(meta or {})
        uri = meta.pop("uri", None)
        problem = check_meta(meta)
        if isinstance(source, (bytes, bytearray, memoryview)):
            item = SourceItem(uri=str(uri) if uri else "", data=bytes(source), meta=meta)
        elif isinstance(source, (str, os.PathLike)):
            full = os.path.abspath(os.fspath(source))
            item = _file_item(full, explicit=True)
            item.meta = meta
            if uri:
                item.uri = str(uri)
        else:
            item = SourceItem(uri=f"item #{n}", error=f"expected a path or bytes, got {type(source).__name__}")
        if problem and not item.error:
            item.error = problem
        yield item
