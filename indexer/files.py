"""Reading image files from disk: the one place that opens a path it was handed.

    data = read_file("/data/photos/cat.jpg", max_bytes=64 << 20)                  # the operator's own path
    data = read_file(path_from_a_request, max_bytes=..., roots=["/data/photos"])  # a server reading for a client

Every read is non-blocking at open and refuses anything but a regular file, so a FIFO, socket or device
named by a path (or found in a folder) is an error instead of a thread blocked forever. With `roots`, the
path must lie under one of them *as it is opened*: the root is opened first and every later component with
O_NOFOLLOW relative to its parent (openat), so a symbolic link swapped in between a check and the open
cannot lead outside (no realpath-then-open race). Roots themselves are trusted configuration and may be
links.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence

from mmsearch.errors import InvalidInput, NotFound, TooLarge

_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def normalize_roots(roots: Iterable[str]) -> list[str]:
    """Absolute, normalised roots (both as written and resolved, so either spelling of a path matches)."""
    out: list[str] = []
    for root in roots:
        for form in (os.path.normpath(os.path.abspath(root)), os.path.realpath(root)):
            if form not in out:
                out.append(form)
    return out


def root_of(path: str, roots: Sequence[str]) -> str | None:
    """The root (from normalize_roots) that `path` lies under lexically, or None."""
    if not os.path.isabs(path):
        return None
    path = os.path.normpath(path)
    best = None
    for root in roots:
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            if best is None or len(root) > len(best):
                best = root
    return best


def open_regular_file(path: str) -> int:
    """A read-only descriptor of the regular file at `path`, opened without blocking (a FIFO, device or
    folder there is InvalidInput, a missing file NotFound). The caller closes it."""
    fd = _open(lambda: os.open(path, _READ_FLAGS), path)
    try:
        _check_regular(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular(fd: int, path: str) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{path}: not a regular file ({_kind(st.st_mode)})")
    return st


def read_file(path: str, *, max_bytes: int, roots: Sequence[str] | None = None) -> bytes:
    """The bytes of the regular file at `path` (at most `max_bytes`, else TooLarge). With `roots`
    (normalised by normalize_roots), only a path under one of them, reached without following links."""
    if roots is None:
        fd = _open(lambda: os.open(path, _READ_FLAGS), path)
    else:
        fd = _open_under(path, roots)
    try:
        st = _check_regular(fd, path)
        if st.st_size > max_bytes:
            raise TooLarge(f"{path}: {st.st_size} bytes is over the {mib(max_bytes)} limit")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # grew while being read
                raise TooLarge(f"{path}: larger than the {mib(max_bytes)} limit")
        return b"".join(chunks)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def _open_under(path: str, roots: Sequence[str]) -> int:
    root = root_of(path, roots)
    if root is None:
        allowed = ", ".join(roots) or "none configured"
        raise InvalidInput(f"{path}: outside the folders this server may read ({allowed})")
    rel = os.path.relpath(os.path.normpath(path), root)
    parts = [] if rel == "." else rel.split(os.sep)
    if not parts:
        raise InvalidInput(f"{path}: is a folder, not a file")
    fd = _open(lambda: os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)), path)
    try:
        for part in parts[:-1]:
            parent = fd
            fd = _open(lambda: os.open(part, _DIR_FLAGS, dir_fd=parent), path)
            os.close(parent)
        parent = fd
        fd = _open(lambda: os.open(parts[-1], _READ_FLAGS | os.O_NOFOLLOW, dir_fd=parent), path)
        os.close(parent)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open(opener, path: str) -> int:
    try:
        return opener()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise InvalidInput(f"{path}: a symbolic link on the way; links are not followed here") from None
        if exc.errno == errno.ENOTDIR:
            raise InvalidInput(f"{path}: a part of the path is not a folder (or is a link)") from None
        raise InvalidInput(f"{path}: cannot open ({exc.strerror or exc})") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


def mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n}-byte"
