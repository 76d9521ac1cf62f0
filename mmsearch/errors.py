"""The one error hierarchy, shared by encoders, indexer and search (and every transport).

Each class says what went wrong from the caller's point of view, so every front end can answer without
knowing where the error was raised: the CLI prints one line and exits with `exit_code`, the gRPC servicer
sends the status named by `grpc_status`, the HTTP API the `http_status`. The message is written for the
user: it says what was wrong and, where it can, what to do instead. It never carries SQL, parameters or
a traceback.
"""

from __future__ import annotations


class MMSearchError(Exception):
    """Base class: the message is written for the user."""

    exit_code = 1
    grpc_status = "INTERNAL"
    http_status = 500

    def brief(self, limit: int = 1000) -> str:
        """The message, cut to `limit` characters: messages quote the input they refuse, and a status
        message of many kilobytes breaks clients (gRPC reports an over-long one as RESOURCE_EXHAUSTED)."""
        text = str(self)
        return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


class InvalidInput(MMSearchError, ValueError):
    """Bad input from outside: an image, a filter, a size, a count (gRPC INVALID_ARGUMENT)."""

    exit_code = 2
    grpc_status = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(MMSearchError, LookupError):
    """A named thing (collection, item, checkpoint, model) does not exist or is not served (NOT_FOUND)."""

    exit_code = 3
    grpc_status = "NOT_FOUND"
    http_status = 404


class TooLarge(InvalidInput):
    """A request or image beyond a configured limit, or a server budget that is spent (RESOURCE_EXHAUSTED)."""

    exit_code = 4
    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 413


class Busy(TooLarge):
    """A shared server budget (decoded pixels in flight, loaded models) is spent for now; retry later
    (RESOURCE_EXHAUSTED; HTTP 429)."""

    http_status = 429


class CheckpointError(MMSearchError):
    """A checkpoint that cannot be loaded: missing file, unknown model_type, bad tensor."""

    exit_code = 5
    grpc_status = "FAILED_PRECONDITION"
    http_status = 409


class ImageError(InvalidInput):
    """An image that cannot be decoded or is refused (corrupt, truncated, too many pixels)."""


class Conflict(MMSearchError):
    """The request contradicts stored state, e.g. querying a collection with another encoder
    (gRPC FAILED_PRECONDITION)."""

    exit_code = 6
    grpc_status = "FAILED_PRECONDITION"
    http_status = 409


class CatalogError(MMSearchError):
    """The catalog database cannot be opened or used (wrong URL, corrupt or empty file, newer schema,
    unreachable server)."""

    exit_code = 7
    grpc_status = "UNAVAILABLE"
    http_status = 503


class NothingIndexed(MMSearchError):
    """A job in which every input failed."""

    exit_code = 8
    grpc_status = "INVALID_ARGUMENT"
    http_status = 400


class DeadlineExceeded(MMSearchError, TimeoutError):
    """The caller's deadline passed before the work was done."""

    exit_code = 9
    grpc_status = "DEADLINE_EXCEEDED"
    http_status = 504


class Unavailable(MMSearchError, RuntimeError):
    """The service cannot take the call now (shutting down, a shard not answering); retry elsewhere."""

    exit_code = 10
    grpc_status = "UNAVAILABLE"
    http_status = 503


class Unauthenticated(MMSearchError):
    """A missing or wrong bearer token."""

    exit_code = 11
    grpc_status = "UNAUTHENTICATED"
    http_status = 401


def error_for_status(name: str) -> type[MMSearchError]:
    """The class a client raises for a status name it received (gRPC code name), so a remote error exits
    the CLI with the same code a local one would. ALREADY_EXISTS and the like fall back to the base."""
    for cls in (NotFound, InvalidInput, Busy, Conflict, DeadlineExceeded, Unavailable, Unauthenticated):
        if cls.grpc_status == name:
            return cls
    return MMSearchError
