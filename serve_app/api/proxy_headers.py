"""Runs in Serve's HTTP proxy, not in the ingress: strips the headers with which a client
could lift the proxy's request timeout (`x-request-timeout-seconds: 0`) or its disconnect
handling (`x-request-disconnect-disabled`) for its own request, before the proxy reads
them. The ingress's edge strips them too, but by then the proxy has already decided.

Enabled per Ray node, in the environment of `ray start` (Serve reads it in the proxy):

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.api.proxy_headers:proxy_middlewares
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.edge import strip_serve_control_headers


class StripServeControlHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            strip_serve_control_headers(scope)
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """The callback Serve's proxy calls once at start: middlewares wrapped around it."""
    return [Middleware(StripServeControlHeaders)]
