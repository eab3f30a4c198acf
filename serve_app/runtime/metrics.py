"""The service's own Prometheus metrics, through Ray's metrics pipeline.

Every replica records into `ray.serve.metrics` objects; each node's Ray metrics agent
exports them on the node's metrics export port (`ray start --metrics-export-port`), with
Ray's `ray_` prefix and Serve's `deployment`/`replica`/`application` tags. A Prometheus
scrape of every node therefore sees one series per replica, and `sum()` over them is the
service total however many replicas run. (An in-process `/metrics` route would show
whichever replica answered the scrape.) See docs/api.md for queries and the Serve
built-ins that cover queueing, batch sizes and replicas.

Durations by phase, one family (`rerank_<phase>_duration_seconds`): `request` (the whole
request in the ingress), `tokenization` (pairs encoded in the ingress), `model_call` (the
ingress waiting on a model deployment), and in the model replica `queue` (a request's
wait for its batch's forward pass) and `inference` (that forward pass).
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.observer import AccessRecord
from serve_app.routing.shadow import AgreementSummary

# Seconds; reranking spans ~1 ms (cached tiny model) to many seconds (1000 long docs on CPU).
LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
# Tokenization and queueing are often sub-millisecond.
PHASE_BUCKETS_S = [0.0005, 0.001, 0.0025, *LATENCY_BUCKETS_S]
DOCUMENT_BUCKETS = [1, 5, 10, 25, 50, 100, 250, 500, 1000]


def _duration(phase: str, description: str, tags: tuple[str, ...], buckets=PHASE_BUCKETS_S):
    return Histogram(
        f"rerank_{phase}_duration_seconds",
        description=description,
        boundaries=buckets,
        tag_keys=tags,
    )


class RayMetrics:
    """The ingress's `Observer`. Created inside a replica (Ray must be initialised)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "rerank_requests",
            description="HTTP requests by route, model and status code.",
            tag_keys=("route", "model", "status"),
        )
        self.failures = Counter(
            "rerank_request_failures",
            description="Failed HTTP requests by route and error type (the error body's "
            "`type`: overloaded, model_unavailable, ledger_unavailable, not_ready, ...).",
            tag_keys=("route", "type"),
        )
        self.request_duration = _duration(
            "request",
            "End-to-end time in the ingress, from request to response.",
            ("route", "model"),
            LATENCY_BUCKETS_S,
        )
        self.tokenization_duration = _duration(
            "tokenization",
            "Time to encode one request's (query, document) pairs for a model.",
            ("model",),
        )
        self.model_call_duration = _duration(
            "model_call",
            "Time the ingress waits for one model deployment call: transport, "
            "queueing, batching and the forward passes (a cascade makes two).",
            ("model",),
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
        # Ray histograms take only positive bounds, so tau (-1..1) is a running-mean gauge.
        shadow_tags = ("primary", "shadow")
        self.shadow_overlap = Histogram(
            "rerank_shadow_overlap_at_10",
            description="Overlap of the served and the shadow model's top 10 (0..1).",
            boundaries=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99],
            tag_keys=shadow_tags,
        )
        self.shadow_mean_overlap = Gauge(
            "rerank_shadow_mean_overlap_at_10",
            description="Mean overlap@10 of served vs shadow rankings since start.",
            tag_keys=shadow_tags,
        )
        self.shadow_mean_tau = Gauge(
            "rerank_shadow_mean_kendall_tau",
            description="Mean Kendall tau-b of served vs shadow scores since start (-1..1).",
            tag_keys=shadow_tags,
        )
        self.shadow_means: dict[tuple[str, str], AgreementSummary] = {}
        self.shadow_requests = Counter(
            "rerank_shadow_requests",
            description="Shadow-scored requests, by outcome (compared or failed).",
            tag_keys=(*shadow_tags, "outcome"),
        )

    def request_done(self, record: AccessRecord) -> None:
        route, model = record.path, record.model or "none"
        self.requests.inc(tags={"route": route, "model": model, "status": str(record.status)})
        self.request_duration.observe(record.duration_s, tags={"route": route, "model": model})
        if record.failure is not None:
            self.failures.inc(tags={"route": route, "type": record.failure})

    def tokenized(self, model: str, seconds: float) -> None:
        self.tokenization_duration.observe(seconds, tags={"model": model})

    def model_called(self, model: str, seconds: float) -> None:
        self.model_call_duration.observe(seconds, tags={"model": model})

    def scored(self, model: str, documents: int, tokens: int) -> None:
        tags = {"model": model}
        if documents > 0:  # Ray counters refuse increments of 0
            self.documents.inc(documents, tags=tags)
        if tokens > 0:
            self.tokens.inc(tokens, tags=tags)
        self.documents_per_request.observe(documents, tags=tags)

    def shadow_compared(self, primary: str, shadow: str, overlap: float, tau: float | None) -> None:
        tags = {"primary": primary, "shadow": shadow}
        means = self.shadow_means.setdefault((primary, shadow), AgreementSummary())
        means.add(overlap, tau)
        self.shadow_overlap.observe(overlap, tags=tags)
        self.shadow_mean_overlap.set(means.mean_overlap, tags=tags)
        if means.mean_tau is not None:
            self.shadow_mean_tau.set(means.mean_tau, tags=tags)
        self.shadow_requests.inc(1, tags={**tags, "outcome": "compared"})

    def shadow_failed(self, primary: str, shadow: str) -> None:
        self.shadow_requests.inc(
            1, tags={"primary": primary, "shadow": shadow, "outcome": "failed"}
        )


class ReplicaMetrics:
    """A model replica's phases: created inside it."""

    def __init__(self, model: str) -> None:
        self.tags = {"model": model}
        self.queue_duration = _duration(
            "queue",
            "Time a scoring request waits in its model replica before the forward "
            "pass of its batch starts (batch gathering and earlier batches).",
            ("model",),
        )
        self.inference_duration = _duration(
            "inference",
            "Forward-pass time of the batch a scoring request rode in (padding, "
            "packing and every pass of that batch).",
            ("model",),
        )

    def observe(self, queued_s: float, inference_s: float) -> None:
        self.queue_duration.observe(queued_s, tags=self.tags)
        self.inference_duration.observe(inference_s, tags=self.tags)
