"""One error shape for every failure: `{"error": {"type", "message", "param"}}`."""

from __future__ import annotations

from starlette.responses import JSONResponse

from serve_app.schemas import ErrorBody, ErrorResponse


class APIError(Exception):
    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.type, self.message, self.param, self.headers)


def error_response(
    status: int,
    type: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(type=type, message=message, param=param))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)
