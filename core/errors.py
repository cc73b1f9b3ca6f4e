"""The one error tree of Duet.

::

    DuetError                      root; ``retryable`` says whether trying again may help
    ├── ValidationError            bad input from a client or an event (never retryable)
    │   ├── PayloadTooLargeError   over a size limit (a body, a document, a NATS message)
    │   └── UnsupportedMediaError  a body in a media type the endpoint does not take
    ├── UnauthorizedError          no, or no valid, credential (a token, an operator token)
    ├── ForbiddenError             a valid caller that may not do this (an Origin, a Host)
    ├── NotFoundError              a named thing does not exist
    ├── ConflictError              a concurrent writer won; retry with fresh state
    ├── DependencyError            NATS, Chroma or a model failed (usually retryable)
    │   └── TimeoutError_          a dependency did not answer in time
    └── GenerationError            an answer generator failed (the caller falls back)

Control-flow signals (a cancelled turn) are not errors: they use ``asyncio.CancelledError``.
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "DependencyError",
    "DuetError",
    "ForbiddenError",
    "GenerationError",
    "NotFoundError",
    "PayloadTooLargeError",
    "TimeoutError_",
    "UnauthorizedError",
    "UnsupportedMediaError",
    "ValidationError",
]


class DuetError(Exception):
    """Root of every error Duet raises on purpose."""

    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class ValidationError(DuetError):
    """Input that does not satisfy the contract; nothing was changed."""

    code = "invalid"


class PayloadTooLargeError(ValidationError):
    """Input over a size limit; nothing was changed."""

    code = "too_large"


class UnsupportedMediaError(ValidationError):
    """A body in a media type the endpoint does not accept."""

    code = "unsupported_media_type"


class UnauthorizedError(DuetError):
    """A missing or invalid credential. The message never says which check failed."""

    code = "unauthorized"


class ForbiddenError(DuetError):
    """A caller, origin or host that may not do this."""

    code = "forbidden"


class NotFoundError(DuetError):
    """The named object does not exist."""

    code = "not_found"


class ConflictError(DuetError):
    """Another writer changed the state first."""

    code = "conflict"
    retryable = True


class DependencyError(DuetError):
    """A dependency (NATS, Chroma, a model) failed."""

    code = "dependency"
    retryable = True


class TimeoutError_(DependencyError):
    """A dependency did not answer in time."""

    code = "timeout"


class GenerationError(DuetError):
    """An answer generator failed; callers fall back to the extractive answer."""

    code = "generation"
    retryable = True
