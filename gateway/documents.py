"""``POST /v1/documents`` (Add-to-RAG) and ``GET /v1/documents/{doc_id}``: operators only.

Both need an operator of the ``api`` scope (PROTOCOL §0); a customer learns nothing,
not even whether a document exists. Sizes are counted in UTF-8 bytes, as JetStream counts
them; a document over ``max_content_bytes`` or cut into more than ``max_document_chunks``
chunks is refused with 413 and the cap (the worker would dead-letter it). With ``?wait=true`` the answer follows the worker's outcome:

=============================  ======  =====================================
outcome                        status  body
=============================  ======  =====================================
applied, deleted, duplicate    200     ``{event_id, outcome, lag_ms, ...}``
pending_acl (no or empty ACL)  202     same, with ``reason``
stale (older version)          409     the error shape plus the same fields
quarantined, dead_letter       422     the error shape plus the same fields
=============================  ======  =====================================

Errors raised here (:mod:`core.errors`) become the one error shape in
:mod:`gateway.errors`: NATS down 503 with ``Retry-After``, a wait that runs out 504.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.errors import (
    DependencyError,
    NotFoundError,
    PayloadTooLargeError,
    TimeoutError_,
    UnsupportedMediaError,
    ValidationError,
)
from gateway.auth import require_operator
from gateway.errors import error_body
from gateway.state import AppState
from ingest.applier import Outcome
from ingest.chunking import chunk_markdown, too_many_chunks
from ingest.events import DOC_ID_PATTERN, DocumentEvent
from ingest.publisher import publish_and_wait, publish_event

__all__ = ["json_media_type", "routes"]

_TRUE = {"1", "true", "yes"}
#: the 503 of both endpoints while NATS or JetStream is down (with Retry-After).
_STORE_DOWN = "the document store is unavailable, retry shortly"
_JSON_TYPES = {"application/json"}
#: ?wait=true: the status of each worker outcome, and the error code of the refusals.
_WAIT_STATUS = {
    Outcome.applied: 200, Outcome.deleted: 200, Outcome.duplicate: 200,
    Outcome.pending_acl: 202, Outcome.stale: 409, Outcome.quarantined: 422,
    Outcome.dead_letter: 422,
}
_WAIT_ERROR = {Outcome.stale: "stale", Outcome.quarantined: "quarantined",
               Outcome.dead_letter: "dead_letter"}


def json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON: the media type itself, parameters aside.

    ``application/json; charset=utf-8`` is; ``text/plain; charset=json`` and
    ``application/jsonx`` are not; a charset other than UTF-8 is not either.
    """
    if not content_type:
        return False
    media, *params = (part.strip() for part in content_type.split(";"))
    if media.lower() not in _JSON_TYPES:
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
                "utf-8", "utf8"):
            return False
    return True


@require_operator("api")
async def post_document(request: Request) -> JSONResponse:
    """Validate a document event and publish it; 202, or the outcome with ``?wait=true``."""
    state: AppState = request.app.state.duet
    settings = state.settings
    if not json_media_type(request.headers.get("content-type")):
        raise UnsupportedMediaError("Content-Type must be application/json")
    event = DocumentEvent.model_validate_json(await request.body())
    content_bytes = len(event.content.encode()) if event.content is not None else 0
    if content_bytes > settings.max_content_bytes:
        raise PayloadTooLargeError(
            f"content of {content_bytes} bytes (UTF-8) is over {settings.max_content_bytes}")
    if event.content is not None:
        chunks = await asyncio.to_thread(chunk_markdown, event.doc_id, event.content,
                                         title=event.metadata.title)
        if len(chunks) > settings.max_document_chunks:
            raise PayloadTooLargeError(too_many_chunks(len(chunks),
                                                       settings.max_document_chunks))
    nc = state.runtime.nc
    assert nc is not None
    health = getattr(request.app.state, "health", None)
    if health is not None and health.nats_down():
        raise DependencyError(_STORE_DOWN)  # at once: a publish would wait out its timeout
    try:
        if request.query_params.get("wait", "").lower() not in _TRUE:
            published = await publish_event(nc, event)
            return JSONResponse({"event_id": published.event_id}, status_code=202)
        # A change cannot be applied while the store is failing: waiting would only run
        # out (504). It is accepted and applies once the store is back: the wait says so
        # as soon as a store fault is known.
        published, outcome = await publish_and_wait(
            nc, event, timeout_s=settings.wait_timeout_s,
            held=health.store_fault if health is not None else None)
    except TimeoutError_:
        raise  # published, not applied in time: 504
    except DependencyError as exc:  # NATS or JetStream down: not acknowledged, so retried
        raise DependencyError(_STORE_DOWN) from exc
    return _wait_response(published.event_id, outcome)


def _wait_response(event_id: str, result: dict[str, Any]) -> JSONResponse:
    if result.get("outcome") == "held":  # the store is failing: applied once it is back
        return JSONResponse({"event_id": event_id, **result}, status_code=202)
    try:
        outcome = Outcome(result.get("outcome"))
    except ValueError:
        outcome = Outcome.dead_letter
    fields = {"event_id": event_id, "outcome": outcome.value, "doc_id": result.get("doc_id"),
              "version": result.get("version"), "lag_ms": result.get("lag_ms"),
              "reason": result.get("reason")}
    status = _WAIT_STATUS[outcome]
    if outcome in _WAIT_ERROR:
        message = result.get("reason") or outcome.value
        return JSONResponse({**error_body(_WAIT_ERROR[outcome], message), **fields},
                            status_code=status)
    return JSONResponse(fields, status_code=status)


@require_operator("api")
async def get_document(request: Request) -> JSONResponse:
    """The registry's view of one document."""
    state: AppState = request.app.state.duet
    doc_id = request.path_params["doc_id"]
    if len(doc_id) > 200 or not re.match(DOC_ID_PATTERN, doc_id):
        raise ValidationError("invalid doc_id")
    registry = state.runtime.registry
    nc = state.runtime.nc
    assert registry is not None and nc is not None
    if not nc.is_connected:
        raise DependencyError(_STORE_DOWN)
    try:
        record, _ = await registry.get(doc_id)
    except Exception as exc:
        raise DependencyError(_STORE_DOWN) from exc
    if record is None:
        raise NotFoundError("no such document")
    return JSONResponse({
        "doc_id": record.doc_id, "version": record.version, "tier": record.state.value,
        "indexed_at": record.indexed_at.isoformat() if record.indexed_at else None,
        "chunks": len(record.chunk_ids), "chunk_ids": record.chunk_ids,
        "updated_at": record.updated_at.isoformat(), "title": record.metadata.get("title"),
        "reason": record.reason,
    })


routes = [
    Route("/v1/documents", post_document, methods=["POST"]),
    Route("/v1/documents/{doc_id:path}", get_document, methods=["GET"]),
]
