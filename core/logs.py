"""Logging set-up: stdlib ``logging``, one logger per package, fields via ``extra=``."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

__all__ = ["ClientFaultsAsInfo", "RedactTokens", "configure_logging", "server_log_filters"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _FieldsFormatter(logging.Formatter):
    """Appends the record's ``extra=`` fields as ``key=value`` pairs."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if not fields:
            return base
        return base + " " + " ".join(f"{k}={v!r}" for k, v in sorted(fields.items()))


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr in one line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("chromadb", "httpx", "uvicorn.access", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


_TOKEN = re.compile(r"([?&]token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Blank ``?token=`` values in log lines: the HTTP server logs each accepted websocket
    with its query string, and browsers can pass an operator token only that way."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _TOKEN.sub(r"\1<redacted>", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


#: What the HTTP server logs as an error with a stack for a client's bad input.
_CLIENT_FAULTS = {"Invalid UTF-8 sequence received from client.":
                  "a websocket text frame that is not valid UTF-8: closed with 1007"}


class ClientFaultsAsInfo(logging.Filter):
    """The HTTP server logs a client's invalid UTF-8 text frame as an ERROR with a stack
    trace (and closes the socket with 1007, as it should): a client's fault is one INFO
    line, not an error an operator is paged for, and a flood of them no flood of stacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        line = _CLIENT_FAULTS.get(record.msg) if isinstance(record.msg, str) else None
        if line is not None:
            record.msg, record.args = line, ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


@contextlib.contextmanager
def server_log_filters() -> Iterator[None]:
    """While the gateway runs, no server log line shows a token from a URL, and a client's
    bad frame is no error with a stack."""
    filters = [RedactTokens(), ClientFaultsAsInfo()]
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn.access")]
    for logger in loggers:
        for f in filters:
            logger.addFilter(f)
    try:
        yield
    finally:
        for logger in loggers:
            for f in filters:
                logger.removeFilter(f)
