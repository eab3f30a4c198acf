"""Every way a request can fail, as domain errors: what went wrong, which field, and how
long to wait before retrying. No status codes here: `serve_app/api/errors.py` holds the
one table from these to HTTP status, error type and headers.
"""

from __future__ import annotations


class RerankError(Exception):
    """A refusal the client is told about. `param` names the request field at fault (in
    the native API's names; the HTTP layer renames it for other shapes)."""

    def __init__(self, message: str, param: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(RerankError):
    """A field breaks a rule or a limit; `message` says how, without the field's name."""


class InvalidJSON(RerankError):
    """The body is not a JSON object."""


class RequestTooLarge(RerankError):
    """The body exceeds `limits.max_body_bytes`, or a path that takes none has one."""


class RequestTimeout(RerankError):
    """The body did not arrive within `limits.body_timeout_s`."""


class Unauthorized(RerankError):
    """No key, a malformed one, or one that is not configured."""


class ModelNotFound(RerankError):
    """A model name that is not served here."""


class BudgetUnsatisfiable(RerankError):
    """An accuracy floor above every served model."""


class RateLimited(RerankError):
    """The caller's quota is spent for now; `retry_after_s` says for how long."""


class Overloaded(RerankError):
    """A queue or in-flight limit is full. `throttle`: the operator chose to present this
    as "too many requests" (`backpressure.status_code: 429`) rather than "unavailable"."""

    def __init__(self, message: str, retry_after_s: float, throttle: bool = False):
        super().__init__(message, retry_after_s=retry_after_s)
        self.throttle = throttle


class ModelUnavailable(RerankError):
    """No replica of the model could answer (it died, or none is running)."""


class ModelTimeout(RerankError):
    """A model call outlived `model_calls.timeout_s`."""


class LedgerUnavailable(RerankError):
    """Usage accounting could not be reached: a request it cannot count is not served."""


class NotReady(RerankError):
    """Some model cannot serve yet (readiness probe)."""
