"""Every error a user can cause, in one tree.

    KilnError                       base: ``str(err)`` says what was wrong and what to do
    ├── SourceError                 the model could not be found or read
    │   ├── ModelNotFoundError      neither a local path nor a cached hub id
    │   └── UnsupportedFormatError  the files are not a format kiln reads
    ├── UnsafeFileError             a file would run code when loaded (pickle), or escapes its folder
    ├── TaskError                   the model cannot do the task asked of it
    ├── DataError                   evaluation data missing, empty or malformed
    ├── BuildError                  export / optimisation / evaluation failed
    ├── BundleError                 a bundle is incomplete, tampered with or from an unknown version
    ├── PlanError                   no plan can be made (missing config, unknown target, bad catalog)
    ├── ServeConfigError            ``kiln serve``'s own configuration is wrong (TLS files, keys file)
    │   └── KeysFileError           the API keys file is missing, unreadable or malformed
    ├── MonitorError                the request log cannot be opened or migrated (bad URL, server down)
    └── RequestError                a request to the server is malformed (serve/ maps these to HTTP)
        ├── InvalidInputError       wrong tensor name, shape, datatype or content
        ├── PayloadTooLargeError    too many items or bytes in one request
        ├── UnknownModelError       the request names a model the server does not have
        ├── OverloadedError         the model's queue is full: retry after ``retry_after`` seconds
        ├── AuthError               no API key, or not a valid one (the server has keys configured)
        ├── ForbiddenError          a valid API key whose scopes do not cover the model or route
        └── RateLimitedError        the API key is over its rate limit: retry after ``retry_after`` seconds

Nothing here imports a web framework: only ``kiln.serve`` maps these to status codes.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base of every error kiln raises on purpose."""


class SourceError(KilnError):
    """The model could not be found or read."""


class ModelNotFoundError(SourceError):
    """A model spec is neither an existing local path nor a hub id in the local cache."""


class UnsupportedFormatError(SourceError):
    """The files are not in a format kiln can read for this operation."""


class UnsafeFileError(KilnError):
    """A file would run code when loaded, or points outside its folder."""


class TaskError(KilnError):
    """The model cannot serve the task asked of it."""


class DataError(KilnError):
    """Evaluation data is missing, empty or malformed."""


class BuildError(KilnError):
    """A build step failed."""


class BundleError(KilnError):
    """A bundle is incomplete, was modified after it was written, or cannot be read."""


class PlanError(KilnError):
    """A plan cannot be made: the message says what was wrong and what to do."""


class ServeConfigError(KilnError):
    """``kiln serve``'s own configuration (TLS certificate and key, API keys file) cannot be used."""


class KeysFileError(ServeConfigError):
    """The API keys file is missing, unreadable or malformed (the message names the file and the fault)."""


class MonitorError(KilnError):
    """The request log's database cannot be opened or migrated (the message names it, redacted)."""


class RequestError(KilnError):
    """A request to the server is malformed."""


class InvalidInputError(RequestError):
    """A request's tensors or fields are wrong."""


class PayloadTooLargeError(RequestError):
    """A request carries more items or bytes than the server accepts."""


class UnknownModelError(RequestError):
    """A request names a model the server does not have."""


class OverloadedError(RequestError):
    """A model's request queue is full; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class AuthError(RequestError):
    """The request carries no API key, or one the server does not know (the server has keys configured)."""


class ForbiddenError(RequestError):
    """The API key is valid, but its scopes do not cover the model or route asked for."""


class RateLimitedError(RequestError):
    """The API key is over its rate limit; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
