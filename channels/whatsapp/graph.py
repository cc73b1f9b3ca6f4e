"""The Graph API client: ``POST /{version}/{phone_number_id}/messages``.

Sends text, templates, read receipts with the typing indicator. A call answered ``429``,
``5xx`` or with one of Meta's throttling codes is tried again with exponential backoff
(``Retry-After`` honoured), up to ``DUET_WHATSAPP_SEND_ATTEMPTS``; so is a connection that
could not be made. A message whose request may have reached Meta without an answer (a read
timeout, a dropped connection) is *not* sent again: a reply is never sent twice, and the
failure is reported instead. Read receipts are idempotent and retried on any failure.

::

    GraphError                 Meta refused, or could not be reached (``retryable``, ``code``)
    └── WindowClosed           the 24-hour customer-service window is closed (code 131047)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from typing import Any

import httpx

from core.errors import DependencyError

__all__ = ["MAX_MEDIA_BYTES", "MAX_TEXT_CHARS", "GraphClient", "GraphError", "WindowClosed"]

#: The largest audio file WhatsApp carries (16 MB).
MAX_MEDIA_BYTES = 16 * 1024 * 1024

log = logging.getLogger("duet.channels.whatsapp")

#: The longest text body WhatsApp accepts.
MAX_TEXT_CHARS = 4096

#: Meta's error codes that mean "too many requests, later": rate limits and throttling.
_THROTTLED = {4, 80007, 130429, 131056, 133016}
#: Meta's error codes for a transient failure on its side.
_TRANSIENT = {1, 2, 131000, 131016}
_WINDOW_CLOSED = 131047


class GraphError(DependencyError):
    """The Graph API refused a call or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.code = code


class WindowClosed(GraphError):
    """Outside the customer-service window only a template may be sent."""


class GraphClient:
    """One business number's ``/messages`` endpoint."""

    def __init__(self, *, base_url: str, version: str, phone_number_id: str, access_token: str,
                 attempts: int = 5, timeout_s: float = 10.0, backoff_s: float = 0.25,
                 max_backoff_s: float = 8.0) -> None:
        self._url = f"{base_url.rstrip('/')}/{version}/{phone_number_id}/messages"
        self._media_url = f"{base_url.rstrip('/')}/{version}/"
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._http = httpx.AsyncClient(
            timeout=timeout_s, headers={"Authorization": f"Bearer {access_token}"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def send_text(self, to: str, body: str) -> str:
        """Send one text message (at most 4,096 characters); returns its ``wamid``."""
        if len(body) > MAX_TEXT_CHARS:
            raise ValueError("split the text first")
        return await self._send({"messaging_product": "whatsapp", "recipient_type": "individual",
                                 "to": to, "type": "text",
                                 "text": {"preview_url": False, "body": body}})

    async def send_template(self, to: str, name: str, language: str) -> str:
        """Send an approved template (allowed outside the customer-service window)."""
        return await self._send({"messaging_product": "whatsapp", "recipient_type": "individual",
                                 "to": to, "type": "template",
                                 "template": {"name": name, "language": {"code": language}}})

    async def mark_read(self, message_id: str, *, typing: bool = True) -> None:
        """Blue ticks for the customer's message and, with ``typing``, the typing indicator
        (shown until the next message is sent, at most 25 s)."""
        body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read",
                                "message_id": message_id}
        if typing:
            body["typing_indicator"] = {"type": "text"}
        await self._call(body, resend_ambiguous=True)

    async def download_media(self, media_id: str) -> bytes:
        """A customer's media file: its URL from ``GET /{version}/{media_id}``, then the
        bytes from that URL (both with the access token; checked against its sha256)."""
        if not media_id.isdigit():
            raise GraphError("not a media id")
        info = await self._get(self._media_url + media_id)
        try:
            meta = info.json()
            url = str(meta["url"])
        except (ValueError, KeyError, TypeError) as exc:
            raise GraphError("the Graph API answered without a media URL") from exc
        if int(meta.get("file_size") or 0) > MAX_MEDIA_BYTES:
            raise GraphError("media file too large")
        data = (await self._get(url)).content
        if len(data) > MAX_MEDIA_BYTES:
            raise GraphError("media file too large")
        digest = meta.get("sha256")
        if digest and hashlib.sha256(data).hexdigest() != digest:
            raise GraphError("media file does not match its sha256")
        return data

    async def _get(self, url: str) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.get(url)
            except httpx.TransportError as exc:
                error, retry_after = GraphError(f"Graph API call failed: {exc!r}",
                                                retryable=True), None
            else:
                if response.status_code < 300:
                    return response
                error, retry_after = _error_of(response), _retry_after(response)
            if not error.retryable or attempt >= self._attempts:
                raise error
            await asyncio.sleep(retry_after if retry_after is not None else min(
                self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1)))

    async def _send(self, body: dict[str, Any]) -> str:
        data = await self._call(body, resend_ambiguous=False)
        try:
            return str(data["messages"][0]["id"])
        except (KeyError, IndexError, TypeError) as exc:
            raise GraphError("the Graph API answered without a message id") from exc

    async def _call(self, body: dict[str, Any], *, resend_ambiguous: bool) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.post(self._url, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                error = GraphError(f"Graph API unreachable: {exc!r}", retryable=True)
                retry_after = None
            except httpx.TransportError as exc:
                # The request may have reached Meta: a message is not sent twice.
                error = GraphError(f"Graph API call failed: {exc!r}",
                                   retryable=resend_ambiguous)
                retry_after = None
            else:
                if response.status_code < 300:
                    try:
                        return response.json()
                    except ValueError:
                        return {}
                error = _error_of(response)
                retry_after = _retry_after(response)
            if not error.retryable or attempt >= self._attempts:
                raise error
            delay = retry_after if retry_after is not None else min(
                self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
            delay *= random.uniform(1.0, 1.25)
            log.warning("Graph API call retried",
                        extra={"status": error.status, "code": error.code, "attempt": attempt,
                               "delay_s": round(delay, 3)})
            await asyncio.sleep(delay)


def _error_of(response: httpx.Response) -> GraphError:
    status = response.status_code
    code = None
    message = f"Graph API answered {status}"
    try:
        detail = response.json().get("error") or {}
        code = detail.get("code")
        message = f"{message}: {detail.get('message') or ''} (code {code})"
    except (ValueError, AttributeError):
        pass
    if code == _WINDOW_CLOSED:
        return WindowClosed(message, status=status, code=code)
    retryable = status == 429 or status >= 500 or code in _THROTTLED or code in _TRANSIENT
    return GraphError(message, status=status, code=code, retryable=retryable)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None
