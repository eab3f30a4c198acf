"""The HTTP edge, as one pure ASGI middleware in front of every route: request ids, the
in-flight limit, the models' capacity check for scoring routes (before the body is read),
the body size limit, API-key authentication, and per request one
structured access-log line and one observation (route, status, error type, duration).
No Ray: unit tests drive it with a plain Starlette app.

Access logs carry ids, sizes, statuses and timings, never a key, a query or a document.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.errors import error_response, error_type, http_error
from serve_app.errors import Overloaded, RequestTooLarge, RerankError
from serve_app.observer import AccessRecord, NullObserver, Observer
from serve_app.service.auth import Authenticator

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9._:/+=-]{1,64}$")

# A child of "ray.serve", so Serve writes the lines to each ingress replica's log file.
access_logger = logging.getLogger("ray.serve.rerank_access")


@dataclass
class EdgePolicy:
    authenticator: Authenticator
    max_body_bytes: int
    public_paths: frozenset[str]  # served without a key
    known_paths: frozenset[str]  # logged by name; anything else as "other"
    proxy_sets_request_id: bool = False  # behind Serve's HTTP proxy
    observer: Observer = field(default_factory=NullObserver)
    # API requests one replica works on at once; beyond it: `overloaded` at once. Kept below
    # Serve's `max_ongoing_requests`, so overload is answered here in the JSON error shape
    # rather than queued at, and shed as plain text by, Serve's proxy. Public paths (health
    # probes) are never counted or shed.
    max_in_flight: int | None = None
    overload_throttles: bool = False  # answer overload as 429 (`backpressure.status_code`)
    retry_after_s: float = 1.0
    # Overrides `retry_after_s` for the in-flight refusal: the models' measured drain time.
    retry_after: Callable[[], float] | None = None
    # Paths that score (a model call per request) and the check, from the load board, that
    # raises `Overloaded` when no model can take one now: run before the body is read, so
    # a request that would only be refused later costs neither reading nor parsing.
    scoring_paths: frozenset[str] = frozenset()
    admit_scoring: Callable[[], None] | None = None


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, policy: EdgePolicy):
        self.app = app
        self.policy = policy
        self.in_flight = 0  # admitted API requests not yet finished (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers(scope)
        policy = self.policy
        # Serve's proxy already echoes the client's x-request-id (or makes one), puts it on
        # the request and on the response; standalone, this middleware does both.
        request_id = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        add_header = not (policy.proxy_sets_request_id and REQUEST_ID_HEADER in headers)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrived"] = started  # latency budgets count from here
        status = 500
        response_started = False
        counted = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                if add_header:
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-request-id", request_id.encode()),
                    ]
            await send(message)

        try:
            if scope.get("path") not in policy.public_paths:
                _check_capacity(self.in_flight, policy)
                if policy.admit_scoring is not None and scope.get("path") in policy.scoring_paths:
                    policy.admit_scoring()
                self.in_flight += 1
                counted = True
            receive = await self._admit(scope, receive, headers, policy, state)
            await self.app(scope, receive, send_with_id)
        except RerankError as e:
            state["error_type"] = error_type(e)
            await http_error(e)(scope, receive, send_with_id)
        except Exception:  # the last line of defence: still our error shape, never a bare 500
            logging.getLogger("ray.serve").exception("unhandled error")
            if response_started:
                raise
            state["error_type"] = "internal_error"
            response = error_response(500, "internal_error", "internal server error")
            await response(scope, receive, send_with_id)
        finally:
            if counted:
                self.in_flight -= 1
            path = scope.get("path", "")
            principal = state.get("principal")
            record = AccessRecord(
                error_type=state.get("error_type"),
                request_id=request_id,
                method=scope.get("method", ""),
                path=path if path in policy.known_paths else "other",
                status=status,
                duration_s=time.perf_counter() - started,
                key_id=principal.key_id if principal else None,
                model=state.get("model"),
                documents=state.get("documents"),
                client_name=_client_name(headers.get("x-client-name")),
            )
            _observe_safely(policy.observer, record)

    async def _admit(
        self,
        scope: Scope,
        receive: Receive,
        headers: dict[str, str],
        policy: EdgePolicy,
        state: dict[str, Any],
    ) -> Receive:
        """Authenticate, then read the body within the limit; returns a `receive` that
        replays it. Raises `Unauthorized`, `RequestTooLarge`."""
        if scope.get("path") not in policy.public_paths:
            state["principal"] = policy.authenticator.authenticate(headers.get("authorization"))
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > policy.max_body_bytes:
            raise _too_large(policy.max_body_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay(b"".join(chunks), receive, first=message)
            body = message.get("body", b"")
            size += len(body)
            if size > policy.max_body_bytes:
                raise _too_large(policy.max_body_bytes)
            chunks.append(body)
            if not message.get("more_body", False):
                return _replay(b"".join(chunks), receive)


def _observe_safely(observer: Observer, record: AccessRecord) -> None:
    try:
        access_logger.info(record.log_line())
        observer.request_done(record)
    except Exception:  # logging or metrics must never fail a request
        logging.getLogger("ray.serve").exception("access observer failed")


def _replay(body: bytes, receive: Receive, first: Message | None = None) -> Receive:
    pending: list[Message] = (
        [first] if first else [{"type": "http.request", "body": body, "more_body": False}]
    )

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _check_capacity(in_flight: int, policy: EdgePolicy) -> None:
    if policy.max_in_flight is not None and in_flight >= policy.max_in_flight:
        raise Overloaded(
            f"this server is at its limit of {policy.max_in_flight} requests in flight; "
            "retry after the time in Retry-After",
            retry_after_s=policy.retry_after() if policy.retry_after else policy.retry_after_s,
            throttle=policy.overload_throttles,
        )


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"request body exceeds {limit} bytes")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _client_name(value: str | None) -> str | None:
    return value if value and _CLIENT_NAME.match(value) else None
