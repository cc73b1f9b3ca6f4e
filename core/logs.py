"""Logging set-up: stdlib ``logging``, one logger per package, fields via ``extra=``."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

__all__ = ["RedactTokens", "configure_logging", "redacted_server_logs"]

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


@contextlib.contextmanager
def redacted_server_logs() -> Iterator[None]:
    """While the gateway runs, no server log line shows a token from a URL."""
    redact = RedactTokens()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn.access")]
    for logger in loggers:
        logger.addFilter(redact)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(redact)
