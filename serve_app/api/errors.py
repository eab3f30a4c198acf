"""The one table from failure to HTTP answer, and the one error shape every refusal has:
`{"error": {"type", "message", "param"}}`, with `Retry-After` where waiting helps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from starlette.responses import JSONResponse

from serve_app import errors
from serve_app.api.schemas import ErrorBody, ErrorResponse


@dataclass(frozen=True)
class HTTPError:
    status: int
    type: str
    headers: dict[str, str] = field(default_factory=dict)
    prefix_param: bool = False  # the message starts with the field's name
    min_retry_after_s: int = 0


ERROR_TABLE: dict[type[errors.RerankError], HTTPError] = {
    errors.InvalidJSON: HTTPError(400, "invalid_json"),
    errors.BudgetUnsatisfiable: HTTPError(400, "budget_unsatisfiable"),
    errors.Unauthorized: HTTPError(401, "unauthorized", {"WWW-Authenticate": "Bearer"}),
    errors.ModelNotFound: HTTPError(404, "model_not_found"),
    # Both leave a body unread, maybe a large or endless one: the connection is closed
    # rather than waited on. Other refusals keep it (no reconnect storm under overload).
    errors.RequestTimeout: HTTPError(408, "request_timeout", {"Connection": "close"}),
    errors.RequestTooLarge: HTTPError(413, "request_too_large", {"Connection": "close"}),
    errors.InvalidRequest: HTTPError(422, "invalid_request", prefix_param=True),
    # A quota's wait is at least a second: `Retry-After: 0` would invite a retry storm.
    errors.RateLimited: HTTPError(429, "rate_limited", min_retry_after_s=1),
    errors.Overloaded: HTTPError(503, "overloaded"),
    errors.ModelUnavailable: HTTPError(503, "model_unavailable"),
    errors.LedgerUnavailable: HTTPError(503, "ledger_unavailable"),
    errors.NotReady: HTTPError(503, "not_ready"),
    errors.ModelTimeout: HTTPError(504, "model_timeout"),
}
# Refusals the web framework raises itself (Starlette's HTTPException), by status: its only
# 400 is a body it could not read as JSON. Any other status gets FRAMEWORK_OTHER_TYPE.
FRAMEWORK_ERROR_TYPES: dict[int, str] = {
    400: "invalid_json",
    404: "not_found",
    405: "method_not_allowed",
}
FRAMEWORK_OTHER_TYPE = "http_error"
# A bug caught at the edge: still this shape, never a bare 500.
INTERNAL_ERROR = HTTPError(500, "internal_error")
# Not an answer: the client went away before one (nginx's 499). Only logged and counted,
# so a client that hangs up is never counted as a server error.
CLIENT_CLOSED = HTTPError(499, "client_closed")


def error_types() -> set[str]:
    """Every `error.type` an answer of this app can carry."""
    return (
        {row.type for row in ERROR_TABLE.values()}
        | set(FRAMEWORK_ERROR_TYPES.values())
        | {FRAMEWORK_OTHER_TYPE, INTERNAL_ERROR.type}
    )


# Statuses the rerank routes document in OpenAPI.
DOCUMENTED_STATUSES = sorted({e.status for e in ERROR_TABLE.values()} | {429, 500})


def error_response(
    status: int,
    type: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(type=type, message=message, param=param))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def error_type(error: errors.RerankError) -> str:
    return ERROR_TABLE[type(error)].type


def http_error(error: errors.RerankError, renames: dict[str, str] | None = None) -> JSONResponse:
    """The answer to `error`. `renames`: field names this route's shape spells differently
    (TEI's `texts` for `documents`), applied to `param` and its first path segment."""
    row = ERROR_TABLE[type(error)]
    param = error.param
    if param is not None and renames:
        head, dot, rest = param.partition(".")
        param = renames.get(head, head) + dot + rest
    status = row.status
    if isinstance(error, errors.Overloaded) and error.throttle:
        status = 429
    headers = dict(row.headers)
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(row.min_retry_after_s, math.ceil(error.retry_after_s)))
    message = f"{param}: {error.message}" if row.prefix_param and param else error.message
    return error_response(status, row.type, message, param, headers or None)
