"""The service's own Prometheus metrics, through Ray's metrics pipeline.

Every ingress replica records into `ray.serve.metrics` objects; each node's Ray metrics
agent exports them on the node's metrics export port (`ray start --metrics-export-port`),
with Ray's `ray_` prefix and Serve's `deployment`/`replica`/`application` tags. A
Prometheus scrape of every node therefore sees one series per replica, and `sum()` over
them is the service total however many ingress replicas run. (An in-process `/metrics`
route would show whichever replica answered the scrape.) See docs/api.md for queries
and the Serve built-ins that cover queueing, batch sizes and replicas.
"""

from __future__ import annotations

from serve_app.http_edge import AccessRecord

# Seconds; reranking spans ~1 ms (cached tiny model) to many seconds (1000 long docs on CPU).
LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
DOCUMENT_BUCKETS = [1, 5, 10, 25, 50, 100, 250, 500, 1000]


class RerankMetrics:
    """Created inside a replica (Ray must be initialised)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter(
            "rerank_requests",
            description="HTTP requests by route, model and status code.",
            tag_keys=("route", "model", "status"),
        )
        self.request_duration = Histogram(
            "rerank_request_duration_seconds",
            description="End-to-end time in the ingress, from request to response.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("route", "model"),
        )
        self.documents = Counter(
            "rerank_documents",
            description="Documents scored in successful requests (the billed unit).",
            tag_keys=("model",),
        )
        self.tokens = Counter(
            "rerank_tokens",
            description="Tokens of the (query, document) pairs scored.",
            tag_keys=("model",),
        )
        self.documents_per_request = Histogram(
            "rerank_request_documents",
            description="Documents per successful request.",
            boundaries=DOCUMENT_BUCKETS,
            tag_keys=("model",),
        )
        self.model_duration = Histogram(
            "rerank_model_call_duration_seconds",
            description="Time the ingress waits for a model deployment: queueing, batching "
            "and the forward passes.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("model",),
        )

    def observe_access(self, record: AccessRecord) -> None:
        model = record.model or "none"
        self.requests.inc(tags={"route": record.path, "model": model, "status": str(record.status)})
        self.request_duration.observe(
            record.duration_s, tags={"route": record.path, "model": model}
        )

    def observe_scored(self, model: str, documents: int, tokens: int, model_seconds: float) -> None:
        tags = {"model": model}
        if documents > 0:  # Ray counters refuse increments of 0
            self.documents.inc(documents, tags=tags)
        if tokens > 0:
            self.tokens.inc(tokens, tags=tags)
        self.documents_per_request.observe(documents, tags=tags)
        self.model_duration.observe(model_seconds, tags=tags)
