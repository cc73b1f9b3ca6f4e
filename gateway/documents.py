"""``POST /v1/documents`` (Add-to-RAG) and ``GET /v1/documents/{doc_id}``."""

from __future__ import annotations

import re

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.errors import ValidationError
from gateway.errors import error_response
from gateway.state import AppState
from ingest.events import DOC_ID_PATTERN, DocumentEvent
from ingest.publisher import publish_and_wait, publish_event

__all__ = ["routes"]

_TRUE = {"1", "true", "yes"}


async def post_document(request: Request) -> JSONResponse:
    """Validate a document event and publish it; 202, or 200 once retrievable with wait."""
    state: AppState = request.app.state.duet
    if "json" not in request.headers.get("content-type", "application/json"):
        return error_response(ValidationError("Content-Type must be application/json"),
                              status=415)
    body = await request.body()
    try:
        event = DocumentEvent.model_validate_json(body)
    except pydantic.ValidationError as exc:
        return error_response(exc)
    if len(event.content or "") > state.settings.max_content_bytes:
        return error_response(ValidationError(
            f"content over {state.settings.max_content_bytes} bytes"), status=413)
    nc = state.runtime.nc
    assert nc is not None
    if request.query_params.get("wait", "").lower() not in _TRUE:
        published = await publish_event(nc, event)
        return JSONResponse({"event_id": published.event_id}, status_code=202)
    published, outcome = await publish_and_wait(nc, event,
                                                timeout_s=state.settings.wait_timeout_s)
    status = 422 if outcome["outcome"] == "dead_letter" else 200
    return JSONResponse({"event_id": published.event_id, "lag_ms": outcome["lag_ms"],
                         "outcome": outcome["outcome"], "reason": outcome.get("reason")},
                        status_code=status)


async def get_document(request: Request) -> JSONResponse:
    """The registry's view of one document."""
    state: AppState = request.app.state.duet
    doc_id = request.path_params["doc_id"]
    if not re.match(DOC_ID_PATTERN, doc_id) or len(doc_id) > 200:
        return error_response(ValidationError(f"invalid doc_id {doc_id!r}"))
    registry = state.runtime.registry
    assert registry is not None
    record, _ = await registry.get(doc_id)
    if record is None:
        return JSONResponse({"error": "not_found", "message": f"no document {doc_id!r}"},
                            status_code=404)
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
