"""Whose fault is a failed apply: the event's own, or a dependency's (the store, NATS)?

The ingest worker dead-letters an event only for the event's own faults (invalid, over a
cap, or failing again and again for a reason of its own). A full disk, a read-only or
unwritable store, a store that is slow or unreachable, NATS gone for a moment: these are
the dependency's faults, however many deliveries they take, and the event waits for them
to clear. :func:`dependency_fault` tells them apart by walking the exception's chain:

* ``OSError`` with ``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``, ``EPERM`` or ``EIO``;
* connection and timeout errors (the builtin ones, and any named ``*Timeout*`` or
  ``*Connect*``, as httpx and nats-py name theirs), and nats-py's errors of a server that
  is gone or restarting (no responders, JetStream unavailable, unexpected EOF, outbound
  buffer full);
* our own :class:`~core.errors.DependencyError`;
* a message that names the condition, whatever the type: Chroma's embedded SQLite says
  "attempt to write a readonly database" or "database or disk is full" in its own error
  types.
"""

from __future__ import annotations

import errno
import re

from core.errors import DependencyError

__all__ = ["dependency_fault"]

_ERRNO = {
    errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted", errno.EIO: "I/O error",
}
_MESSAGES = re.compile(
    r"readonly database|read-only (file system|database)|database or disk is full"
    r"|no space left on device|disk quota|disk i/o error|unable to open database"
    r"|database is locked|permission denied|connection (refused|reset|closed|aborted)"
    r"|could not connect|timed out|no servers available",
    re.IGNORECASE,
)
_NAMES = re.compile(r"Timeout|Connect|NoServers|NoResponders|ServiceUnavailable|"
                    r"UnexpectedEOF|OutboundBufferLimit", re.IGNORECASE)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _describe(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno in _ERRNO:
        return f"{_ERRNO[exc.errno]} ({errno.errorcode[exc.errno]})"
    text = str(exc)
    match = _MESSAGES.search(text)
    if match:
        return match.group(0).lower()
    if isinstance(exc, ConnectionError | TimeoutError) or _NAMES.search(type(exc).__name__):
        return f"unreachable ({type(exc).__name__})"
    if isinstance(exc, DependencyError):
        return exc.message[:200]
    return None


def dependency_fault(exc: BaseException) -> str | None:
    """A short description when ``exc`` is a dependency's fault, None when it is the event's."""
    for link in _chain(exc):
        found = _describe(link)
        if found is not None:
            return found
    return None
