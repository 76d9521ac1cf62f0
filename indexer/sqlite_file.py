"""The catalog's SQLite file, checked before SQLite opens it and created so that it never exists half-made.

SQLite treats an empty file as a new database and reports truncation or a foreign file only when a query
reaches the damage; these checks turn each into a CatalogError that says what to do, when the catalog is
opened.
"""

from __future__ import annotations

import os
import stat
import struct
import uuid

from mmsearch.errors import CatalogError

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_file(path: str) -> bool:
    """Whether a catalog file exists at `path`; CatalogError when what is there cannot be a whole SQLite
    database: not a regular file, empty (0 bytes, with no write-ahead log that could fill it), not SQLite,
    or shorter than its header says (truncated). The header check is cheap and catches what SQLite itself
    reports only later, or never (it silently treats an empty file as a new database)."""
    how = (f"restore it from a backup, or move it aside (mv {path} {path}.bad) to start a new, empty catalog")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CatalogError(f"cannot open catalog {path} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CatalogError(f"catalog {path} is not a regular file; {how}")
        head = os.read(fd, 100)
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {path} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if st.st_size == 0:
        try:
            wal = os.path.getsize(path + "-wal")
        except OSError:
            wal = 0
        if wal:  # a new catalog whose first pages are still in the write-ahead log
            return True
        raise CatalogError(f"catalog {path} is empty (0 bytes): it was damaged (a full disk, a crash, a copy "
                           f"cut short); {how}")
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
        raise CatalogError(f"catalog {path} is not an SQLite database (damaged, or another file); {how}")
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    change_counter, pages, valid_for = struct.unpack(">I", head[24:28])[0], struct.unpack(">I", head[28:32])[0], \
        struct.unpack(">I", head[92:96])[0]
    if valid_for == change_counter and pages and st.st_size < pages * page_size:
        raise CatalogError(f"catalog {path} is truncated ({st.st_size} bytes; its header says "
                           f"{pages * page_size}); {how}")
    return True


def create_sqlite_file(path: str, *, page_size: int) -> None:
    """A new, empty SQLite database at `path` with pages of `page_size` bytes, made under a temporary name
    and linked into place, so a catalog file that exists is never a half-made one (an empty catalog.db is
    refused as damaged)."""
    import sqlite3

    tmp = f"{path}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute(f"PRAGMA page_size={int(page_size)}")  # fixed once the first page is written
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE mmsearch_creating (x INTEGER)")  # page 1 written: a whole database
            conn.execute("DROP TABLE mmsearch_creating")
            conn.commit()
        finally:
            conn.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it meanwhile: use theirs
    except OSError as exc:
        raise CatalogError(f"cannot create catalog {path} ({exc.strerror or exc})") from None
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
