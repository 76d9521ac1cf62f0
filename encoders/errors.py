"""User-facing errors shared by every layer.

Each class says what went wrong from the caller's point of view, so the CLI can print one line with a
stable exit code and the gRPC server can pick a status code, without either knowing where it was raised.
"""


class MMSearchError(Exception):
    """Base class: the message is written for the user."""

    exit_code = 1


class InvalidInput(MMSearchError, ValueError):
    """Bad input from outside: an image, a filter, a size, a count (gRPC INVALID_ARGUMENT)."""

    exit_code = 2


class NotFound(MMSearchError, LookupError):
    """A named thing (collection, item, checkpoint) does not exist (gRPC NOT_FOUND)."""

    exit_code = 3


class TooLarge(InvalidInput):
    """A request or image beyond a configured limit (gRPC RESOURCE_EXHAUSTED)."""

    exit_code = 4


class CheckpointError(MMSearchError):
    """A checkpoint that cannot be loaded: missing file, unknown model_type, bad tensor."""

    exit_code = 5


class ImageError(InvalidInput):
    """An image that cannot be decoded or is refused (corrupt, truncated, too many pixels)."""


class Conflict(MMSearchError):
    """The request contradicts stored state, e.g. querying a collection with another encoder
    (gRPC FAILED_PRECONDITION)."""

    exit_code = 6
