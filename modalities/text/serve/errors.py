"""HTTP errors in OpenAI's JSON shape, and the API-key check."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.responses import JSONResponse

from polysteer.modalities.text.serve.schemas import ErrorDetail, ErrorResponse


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {"message": ..., "type": kind}}``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind))
    return JSONResponse(body.model_dump(), status_code=status)


def require_key(request: Request) -> None:
    """With an API key configured, every /v1 route needs ``Authorization: Bearer KEY``."""
    key = request.app.state.config.api_key
    if not key:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "authentication_error")
