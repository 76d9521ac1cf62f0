"""Reading an input named by a remote uri (http(s)://, s3://, any fsspec protocol), for the operator's bulk job.

    data = read_remote("https://host/a.jpg", max_bytes=256 << 20, timeout_s=60)   # or MMSearchError

Only bulk jobs call this (indexer/ingest.py with roots=None): a server never fetches a uri a client sent, since
that would let any client make it request internal addresses (SSRF). fsspec and its backends are optional
extras (`pip install -e ".[remote]"` for http(s), `".[s3]"` for s3); a missing one is a one-line error per item
saying what to install. Every failure is a typed error with a one-line message the job records beside the uri.
"""

from __future__ import annotations

import os
import re

from mmsearch.errors import InvalidInput, NotFound, TooLarge, Unavailable

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_HTTP = ("http", "https")


def remote_protocol(uri: str) -> str | None:
    """The protocol of a uri that names something outside the local file system ("http", "s3", ...), or
    None for a local path or a file:// uri."""
    match = _SCHEME.match(uri or "")
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def read_remote(uri: str, *, max_bytes: int, timeout_s: float) -> bytes:
    """The bytes at `uri` (at most `max_bytes`, else TooLarge), read through fsspec within `timeout_s` per
    request."""
    from indexer.files import mib

    protocol = remote_protocol(uri)
    try:
        import fsspec
    except ImportError:
        raise InvalidInput(f'{uri}: install fsspec to read {protocol}:// uris (pip install -e ".[remote]")') \
            from None
    try:
        with fsspec.open(uri, "rb", **_options(protocol, timeout_s)) as fh:
            data = fh.read(max_bytes + 1)  # one read more than the limit tells a too-large file without reading it all
    except ImportError as exc:  # the protocol's backend (s3fs, gcsfs, aiohttp ...) is not installed
        missing = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None)
        hint = f"install {missing} to read {protocol}:// uris" if missing else str(exc)
        raise InvalidInput(f"{uri}: {hint}") from None
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise InvalidInput(f"{uri}: no fsspec file system reads {protocol}:// uris") from None
        raise InvalidInput(f"{uri}: cannot read ({exc})") from None
    except Exception as exc:  # noqa: BLE001  (each backend raises its own kinds; _read_error sorts them)
        raise _read_error(uri, exc, timeout_s) from None
    if len(data) > max_bytes:
        raise TooLarge(f"{uri}: larger than the {mib(max_bytes)} limit")
    return data


def _options(protocol: str, timeout_s: float) -> dict:
    """fsspec storage options: a timeout for the backends that take one, streaming for http (one GET, no
    HEAD or range requests, which plain servers may not answer)."""
    if protocol in _HTTP:
        import aiohttp

        return {"block_size": 0, "client_kwargs": {"timeout": aiohttp.ClientTimeout(total=timeout_s)}}
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": timeout_s, "read_timeout": timeout_s}}
    return {}


def _read_error(uri: str, exc: BaseException, timeout_s: float):
    """The typed, one-line error for a failed read (fsspec's http raises FileNotFoundError for a 404 and
    a refused connection alike; the cause says which)."""
    cause = exc.__cause__ or exc
    status = getattr(cause, "status", None)
    if isinstance(status, int):
        if status == 404:
            return NotFound(f"{uri}: not found (HTTP 404)")
        return Unavailable(f"{uri}: HTTP {status} {getattr(cause, 'message', '') or ''}".rstrip())
    if isinstance(cause, TimeoutError) or type(cause).__name__ in ("FSTimeoutError", "ServerTimeoutError"):
        return Unavailable(f"{uri}: no answer within {timeout_s:g} s")
    os_error = getattr(cause, "os_error", None)  # aiohttp's ClientConnectorError
    if isinstance(os_error, OSError) or type(cause).__name__.startswith("ClientConnector"):
        code = getattr(os_error, "errno", None)  # its strerror is asyncio's "Connect call failed (...)"
        why = os.strerror(code) if code else str(os_error or cause)
        return Unavailable(f"{uri}: cannot connect ({why.lower()})")
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{uri}: not found")
    if isinstance(exc, PermissionError):
        return InvalidInput(f"{uri}: access denied")
    if isinstance(cause, OSError):
        return Unavailable(f"{uri}: cannot read ({cause.strerror or cause})")
    return Unavailable(f"{uri}: cannot read ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})")
