"""The environment the service's Ray processes start with.

Ray and Serve read these when a worker process starts, so they are set where Ray starts:
`cluster.yaml` and `deployments/kuberay-rayservice.yaml` (checked by
`tests/test_configs.py`), the load tools and the runtime tests (`with_service_env`).
Measured in docs/RELIABILITY.md (Overload): on two cores at 10x capacity they took the
ingress's CPU per request from about 2.0 to 1.6-1.9 ms and its refusal p99 from 144-316
to 33-37 ms.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SERVICE_ENV: dict[str, str] = {
    # Ray starts workers at niceness 15 by default, behind anything else on the host.
    "RAY_worker_niceness": "0",
    # Run user code and the handle's router on the replica's own event loop: Serve's
    # defaults hand every request between three threads (HTTP, user code, router), and on
    # a busy host those GIL hand-offs cost more than the request's own work. Safe here:
    # nothing in our deployments blocks its loop (forwards and tokenization run in
    # executors).
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # Serve's logs go to its files only; echoing every access line to stderr costs the
    # replica a write and Ray's log monitor a read per request.
    "RAY_SERVE_LOG_TO_STDERR": "0",
}

# Serve's direct ingress: HAProxy hands connections to the ingress replica's own HTTP
# server instead of Serve's Python proxy.
DIRECT_INGRESS_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}


def with_service_env(
    environ: MutableMapping[str, str] = os.environ, *, direct_ingress: bool = False
) -> None:
    """Set the service's Ray environment in `environ` (this process's, before `ray.init`
    starts a local Ray), leaving any value the caller already set."""
    wanted = SERVICE_ENV | (DIRECT_INGRESS_ENV if direct_ingress else {})
    for name, value in wanted.items():
        environ.setdefault(name, value)
