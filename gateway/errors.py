"""JSON error responses: every refusal says what was wrong and changes nothing."""

from __future__ import annotations

import pydantic
from starlette.responses import JSONResponse

from core.errors import DuetError, NotFoundError, TimeoutError_, ValidationError

__all__ = ["error_response", "validation_message"]

_STATUS = {ValidationError: 422, NotFoundError: 404, TimeoutError_: 504}


def validation_message(exc: pydantic.ValidationError) -> str:
    """One readable line per problem of a pydantic validation error."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
    )


def error_response(exc: DuetError | pydantic.ValidationError, *, status: int | None = None
                   ) -> JSONResponse:
    """The JSON body ``{"error": code, "message": ...}`` with a fitting status."""
    if isinstance(exc, pydantic.ValidationError):
        return JSONResponse({"error": "invalid", "message": validation_message(exc)},
                            status_code=status or 422)
    code = status or next((s for t, s in _STATUS.items() if isinstance(exc, t)), 503)
    return JSONResponse({"error": exc.code, "message": exc.message,
                         "retryable": exc.retryable}, status_code=code)
