"""The overload harness's reading of the ingress's access log (`load_tests/overload.py`):
where each refusal was decided, hang-ups, and Serve's own refusals of model calls, from
log lines in Serve's format. No Ray, no load."""

from __future__ import annotations

import json

from load_tests.overload import IngressAccessLog, where_decided


def access(request_id: str, status: int, documents: int | None, ms: float, kind=None) -> str:
    record = {
        "event": "access",
        "request_id": request_id,
        "method": "POST",
        "path": "/v1/rerank",
        "status": status,
        "duration_ms": ms,
        "key_id": "anonymous",
        "model": None,
        "documents": documents,
        "client_name": None,
        "error_type": kind,
    }
    line = json.dumps(record, separators=(",", ":"))
    return f"INFO 2026-12-02 01:08:03,623 rerank_RerankIngress wrr9qreu {request_id} -- {line}\n"


DROPPED = (
    "WARNING 2026-12-02 01:08:14,190 rerank_RerankIngress wrr9qreu p1 -- Request dropped "
    "due to backpressure (num_queued_requests=12, max_queued_requests=12).\n"
)


def test_refusals_are_split_by_whether_the_body_was_parsed(tmp_path):
    serve = tmp_path / "serve"
    serve.mkdir()
    log = serve / "replica_rerank_RerankIngress_abc.log"
    log.write_text(access("old", 200, 12, 500.0))
    reader = IngressAccessLog(tmp_path)
    assert [r["request_id"] for r in reader.new_records()] == ["old"]
    with log.open("a") as f:
        f.write(access("a", 503, None, 0.2, "overloaded"))
        f.write(access("b", 503, None, 0.4, "overloaded"))
        f.write(access("c", 503, 12, 9.0, "overloaded"))
        f.write(DROPPED)
        f.write(access("d", 499, 12, 800.0, "client_closed"))
        f.write(access("e", 200, 12, 600.0))
        f.write('INFO 2026-12-02 01:08:15,000 rerank_RerankIngress x e -- {"event":"acc')
    records = reader.new_records()  # only what came since, and only whole lines
    assert [r["request_id"] for r in records] == ["a", "b", "c", "d", "e"]
    assert reader.serve_refusals == 1
    split = where_decided(records)
    assert split["refused_before_body"]["n"] == 2 and split["refused_after_parse"]["n"] == 1
    assert split["refused_after_parse"]["p50"] == 9.0
    assert split["by_status"] == {"200": 1, "499 client_closed": 1, "503 overloaded": 3}
    assert reader.new_records() == [] and reader.serve_refusals == 0
