"""`RecentTraffic`: the status page's totals and per-model window, on a hand-driven clock."""

from __future__ import annotations

from serve_app.observer import AccessRecord
from serve_app.service.traffic import RecentTraffic, TeeObserver

RERANK = frozenset({"/v1/rerank"})


def record(path="/v1/rerank", status=200, model="m", seconds=0.01, documents=4, error=None):
    return AccessRecord("id", "POST", path, status, seconds, None, model, documents, None, error)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_totals_count_rerank_routes_and_errors_by_type():
    traffic = RecentTraffic(RERANK, clock=Clock())
    traffic.request_done(record())
    traffic.request_done(record(status=401, model=None, error="unauthorized"))
    traffic.request_done(record(status=503, error="overloaded"))
    traffic.request_done(record(path="/v1/models"))  # the status page's own polling
    snap = traffic.snapshot(["m", "idle"])
    assert (snap["requests"], snap["errors"]) == (3, 2)
    assert snap["errors_by_type"] == {"overloaded": 1, "unauthorized": 1}
    assert snap["models"]["m"]["requests"] == 1  # failures are not latency samples
    assert snap["models"]["idle"] == {
        "requests": 0,
        "p50_ms": None,
        "p99_ms": None,
        "docs_per_s": 0.0,
    }


def test_percentiles_and_docs_per_second_cover_the_window_only():
    clock = Clock()
    traffic = RecentTraffic(RERANK, window_s=60, clock=clock)
    clock.now += 30
    traffic.request_done(record(seconds=1.0, documents=100))  # leaves the window below
    clock.now += 60
    for ms in range(1, 101):
        traffic.request_done(record(seconds=ms / 1000, documents=3))
    clock.now += 10
    window = traffic.snapshot(["m"])["models"]["m"]
    assert window["requests"] == 100
    assert window["p50_ms"] == 50.5 and window["p99_ms"] == 99.01
    assert window["docs_per_s"] == 300 / 60


def test_a_young_replica_divides_by_its_uptime():
    clock = Clock()
    traffic = RecentTraffic(RERANK, window_s=60, clock=clock)
    traffic.request_done(record(documents=10))
    clock.now += 5
    assert traffic.snapshot([])["models"]["m"]["docs_per_s"] == 2.0


def test_the_tee_feeds_both_and_forwards_everything_else():
    seen = []

    class Main:
        def request_done(self, r):
            seen.append(r)

        def scored(self, model, documents, tokens):
            seen.append((model, documents, tokens))

    traffic = RecentTraffic(RERANK, clock=Clock())
    tee = TeeObserver(Main(), traffic)
    tee.request_done(record())
    tee.scored("m", 1, 2)
    assert len(seen) == 2 and traffic.requests == 1
