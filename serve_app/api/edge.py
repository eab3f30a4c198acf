"""The HTTP edge, as one pure ASGI middleware in front of every route: request ids, the
in-flight limits (per replica, per key), API-key authentication, a place at the models
for scoring routes (before the body is read), reading the body (size limit, deadline;
none on public paths), and per request one structured access-log line and one observation
(route, status, error type, duration).
A client that goes away before its answer (mid-body, or while its request is worked on,
which Serve answers by cancelling it) is logged and counted as 499 `client_closed`, never
as a server error or as a malformed body.
No Ray: unit tests drive it with a plain Starlette app.

Access logs carry ids, sizes, statuses and timings, never a key, a query or a document.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.errors import (
    CLIENT_CLOSED,
    INTERNAL_ERROR,
    error_response,
    error_type,
    http_error,
)
from serve_app.errors import Overloaded, RateLimited, RequestTimeout, RequestTooLarge, RerankError
from serve_app.observer import AccessRecord, NullObserver, Observer
from serve_app.service.auth import ANONYMOUS, Authenticator

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9._:/+=-]{1,64}$")

# A child of "ray.serve", so Serve writes the lines to each ingress replica's log file.
access_logger = logging.getLogger("ray.serve.rerank_access")


class Place(Protocol):
    """A scoring request's place at the models (`serve_app/routing/admission.py`'s
    `Reservation`): given back once, however the request ends."""

    def release(self) -> None: ...


class ClientDisconnected(Exception):
    """The client closed the connection before its request body had arrived."""


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
    # The whole body must arrive within this (from the request's arrival), or 408.
    body_timeout_s: float | None = None
    # API requests one key may have in flight here; beyond it 429 (auth off: not applied).
    max_in_flight_per_key: int | None = None
    # Overrides `retry_after_s` for the in-flight refusal: the models' measured drain time.
    retry_after: Callable[[], float] | None = None
    # Paths that score (a model call per request) and the reservation of a place at the
    # models, from the load board, taken once the key is known and before the body is
    # read (raises `Overloaded` when there is none): a request that would only be refused
    # later costs neither reading nor parsing. Handed to the service in
    # `scope["state"]["reservation"]`; given back here, at the latest, when it ends.
    scoring_paths: frozenset[str] = frozenset()
    reserve_scoring: Callable[[], Place] | None = None


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, policy: EdgePolicy):
        self.app = app
        self.policy = policy
        self.in_flight = 0  # admitted API requests not yet finished (one event loop: no lock)
        self.per_key = KeySlots(policy.max_in_flight_per_key, policy.retry_after_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        strip_serve_control_headers(scope)
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
                self.in_flight += 1
                counted = True
            receive = await self._admit(scope, receive, headers, policy, state)
            await self.app(scope, receive, send_with_id)
        except ClientDisconnected:  # nobody to answer
            status, state["error_type"] = CLIENT_CLOSED.status, CLIENT_CLOSED.type
        except asyncio.CancelledError:
            # Serve cancels a request whose client has gone away.
            if not response_started:
                status, state["error_type"] = CLIENT_CLOSED.status, CLIENT_CLOSED.type
            raise
        except RerankError as e:
            state["error_type"] = error_type(e)
            await http_error(e)(scope, receive, send_with_id)
        except Exception:  # the last line of defence: still our error shape, never a bare 500
            logging.getLogger("ray.serve").exception("unhandled error")
            if response_started:
                raise
            state["error_type"] = INTERNAL_ERROR.type
            response = error_response(
                INTERNAL_ERROR.status, INTERNAL_ERROR.type, "internal server error"
            )
            await response(scope, receive, send_with_id)
        finally:
            if counted:
                self.in_flight -= 1
            reservation = state.pop("reservation", None)
            if reservation is not None:
                reservation.release()
            self.per_key.release(state.pop("key_slot", None))
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
        """Authenticate and take a slot of the key's, then read the body within the limit
        and the deadline; returns a `receive` that replays it. Raises `Unauthorized`,
        `RateLimited`, `RequestTooLarge`, `RequestTimeout`."""
        if scope.get("path") in policy.public_paths:
            return refuse_body(headers, receive)
        principal = policy.authenticator.authenticate(headers.get("authorization"))
        state["principal"] = principal
        if principal.key_id != ANONYMOUS:
            state["key_slot"] = self.per_key.acquire(principal.key_id)
        # After the key (microseconds), so only a caller with a key holds a place while its
        # body arrives, and no more of them than its in-flight cap allows.
        if policy.reserve_scoring is not None and scope.get("path") in policy.scoring_paths:
            state["reservation"] = policy.reserve_scoring()
        deadline_s = None
        if policy.body_timeout_s is not None:
            deadline_s = policy.body_timeout_s - (time.perf_counter() - state["arrived"])
        return await read_body(receive, headers, policy.max_body_bytes, deadline_s)


# -- reading the request: control headers, the body, per-key slots ---------------------

# Serve's proxy reads these to lift its request timeout and disconnect handling for one
# request: a client must not choose that. Stripped here and, where the proxy runs
# `serve_app.api.proxy_headers`, before the proxy reads them.
SERVE_CONTROL_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})


def strip_serve_control_headers(scope: Scope) -> None:
    headers = scope.get("headers", [])
    if any(name.lower() in SERVE_CONTROL_HEADERS for name, _ in headers):
        scope["headers"] = [(n, v) for n, v in headers if n.lower() not in SERVE_CONTROL_HEADERS]


def refuse_body(headers: dict[str, str], receive: Receive) -> Receive:
    """A public path (health probes, docs) takes no body: one announced is refused at once
    (413) and nothing is read, so an unauthenticated trickle cannot hold a slot."""
    if _announces_body(headers):
        raise RequestTooLarge("this path takes no request body")
    return _replay(b"", receive)


def _announces_body(headers: dict[str, str]) -> bool:
    declared = headers.get("content-length")
    return "transfer-encoding" in headers or declared not in (None, "", "0")


async def read_body(
    receive: Receive, headers: dict[str, str], max_bytes: int, deadline_s: float | None
) -> Receive:
    """The whole body, at most `max_bytes`, arrived within `deadline_s` (None: no deadline);
    returns a `receive` that replays it. A declared length over the limit is refused
    before a byte is read."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    if deadline_s is None:
        return await _read_body(receive, max_bytes)
    try:
        return await asyncio.wait_for(_read_body(receive, max_bytes), max(0.0, deadline_s))
    except asyncio.TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None


async def _read_body(receive: Receive, max_bytes: int) -> Receive:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        if message["type"] != "http.request":
            return _replay(b"".join(chunks), receive, first=message)
        body = message.get("body", b"")
        size += len(body)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(body)
        if not message.get("more_body", False):
            return _replay(b"".join(chunks), receive)


class KeySlots:
    """In-flight requests per API key on this replica, so that one key cannot take every
    slot of the replica's admission limit. One event loop: no lock."""

    def __init__(self, limit: int | None, retry_after_s: float):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.counts: dict[str, int] = {}

    def acquire(self, key_id: str) -> str | None:
        """Take a slot for `key_id` (release it with what this returns); raises
        `RateLimited` when the key holds them all."""
        if self.limit is None:
            return None
        held = self.counts.get(key_id, 0)
        if held >= self.limit:
            raise RateLimited(
                f"this key has {held} requests in flight on this server, its limit; "
                "retry after the time in Retry-After",
                retry_after_s=self.retry_after_s,
            )
        self.counts[key_id] = held + 1
        return key_id

    def release(self, key_id: str | None) -> None:
        if key_id is None:
            return
        held = self.counts.pop(key_id) - 1
        if held:
            self.counts[key_id] = held


# -- the rest ---------------------------------------------------------------------------


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
