"""The ingress deployment: one Serve replica serving the HTTP API. It holds what the
builder assembled for it (`Frontend`) and hands Serve the FastAPI app; it has no routes,
policies or callbacks of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import serve


@serve.deployment
@serve.ingress()
class RerankIngress:
    def __init__(self, assemble: Callable[..., Any], *args: Any):
        """`assemble(*args)`: the builder's `build_frontend`, run here in the replica
        (tokenizers, threads and metrics live in the process that uses them)."""
        self.frontend = assemble(*args)

    def __serve_build_asgi_app__(self) -> Callable[..., Any]:
        return self.frontend.app
