"""Admission from a fake load board: when a model counts as full, and the Retry-After a
refusal carries (queued work / measured service rate, rounded up, at least 1 s, capped)."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from serve_app.errors import Overloaded
from serve_app.routing.admission import (
    RETRY_AFTER_CAP_S,
    Admission,
    QueueBound,
    drain_seconds,
    serve_queue_bound,
)
from serve_app.routing.budget import ModelLoad
from serve_app.routing.loads import LoadBoard


class FakeBoard:
    """Loads and calls in flight set directly by each test."""

    def __init__(self) -> None:
        self.load: dict[str, ModelLoad] = {}
        self.calls: dict[str, int] = {}
        self.undispatched: dict[str, float] = {}

    def set(self, model: str, calls: int = 0, **load) -> None:
        self.calls[model] = calls
        self.load[model] = ModelLoad(**{"seconds_per_token": None, **load})

    def loads(self) -> dict[str, ModelLoad]:
        return dict(self.load)

    def requests_in_flight(self, model: str) -> int:
        return self.calls[model]

    def undispatched_tokens(self, model: str) -> float:
        return self.undispatched.get(model, 0.0)

    def hold(self, model: str) -> None:
        self.calls[model] += 1

    def unhold(self, model: str) -> None:
        self.calls[model] -= 1


def admission(board: FakeBoard, **bounds: QueueBound) -> Admission:
    return Admission(board, bounds)


def test_a_model_is_full_at_replicas_times_ongoing_plus_queued_calls():
    board = FakeBoard()
    adm = admission(board, a=QueueBound(max_ongoing_requests=4, max_queued_requests=8))
    board.set("a", calls=11, replicas=1)
    adm.check(["a"])  # one short of 4 + 8: admitted
    board.set("a", calls=12, replicas=1)
    with pytest.raises(Overloaded):
        adm.check(["a"])
    board.set("a", calls=12, replicas=2)  # a second replica takes 4 more
    adm.check(["a"])
    board.set("a", calls=16, replicas=0)  # no replica: the failover path's case, counted as one
    with pytest.raises(Overloaded):
        adm.check(["a"])


def test_an_unbounded_serve_queue_is_never_full_by_count():
    board = FakeBoard()
    adm = admission(board, a=QueueBound(max_ongoing_requests=1, max_queued_requests=-1))
    board.set("a", calls=10_000)
    adm.check(["a"])


def test_queued_work_over_max_queue_wait_is_full_once_the_rate_is_measured():
    board = FakeBoard()
    bound = QueueBound(max_ongoing_requests=100, max_queued_requests=-1, max_queue_wait_s=2.0)
    adm = admission(board, a=bound)
    # 30k tokens at 0.1 ms each: 3 s of work, but no batch measured yet: not judged.
    board.set("a", queued_tokens=30_000, seconds_per_token=1e-4, batches_measured=0)
    adm.check(["a"])
    board.set("a", queued_tokens=30_000, seconds_per_token=1e-4, batches_measured=5)
    with pytest.raises(Overloaded, match="needs 3.0s"):
        adm.check(["a"])
    # Two replicas drain it in 1.5 s.
    board.set("a", queued_tokens=30_000, seconds_per_token=1e-4, batches_measured=5, replicas=2)
    adm.check(["a"])


@pytest.mark.parametrize(
    "queued_tokens, replicas, expected",
    [
        (25_000, 1, 3.0),  # 2.5 s of work: rounded up
        (25_000, 2, 2.0),  # 1.25 s per replica: rounded up
        (1_000, 1, 1.0),  # 0.1 s: never below a second
        (0, 1, 1.0),
        (10_000_000, 1, float(RETRY_AFTER_CAP_S)),  # 1000 s: capped
    ],
)
def test_retry_after_is_the_drain_time_rounded_up_and_capped(queued_tokens, replicas, expected):
    board = FakeBoard()
    adm = admission(board, a=QueueBound(1, 1, fallback_retry_after_s=7))
    board.set(
        "a",
        calls=5,  # over 2 replicas x 1 ongoing + 1 queued
        queued_tokens=queued_tokens,
        seconds_per_token=1e-4,
        batches_measured=3,
        replicas=replicas,
    )
    with pytest.raises(Overloaded) as refused:
        adm.check(["a"])
    assert refused.value.retry_after_s == expected
    assert adm.retry_after_s("a") == expected


def test_retry_after_falls_back_to_the_configured_value_until_a_rate_is_measured():
    board = FakeBoard()
    adm = admission(board, a=QueueBound(1, 1, fallback_retry_after_s=7))
    board.set("a", calls=2, queued_tokens=25_000)
    assert drain_seconds(board.load["a"]) is None
    with pytest.raises(Overloaded) as refused:
        adm.check(["a"])
    assert refused.value.retry_after_s == 7


def test_a_request_any_of_several_models_could_serve_is_refused_only_when_all_are_full():
    board = FakeBoard()
    adm = admission(
        board, a=QueueBound(1, 1), b=QueueBound(1, 1, throttle=True, fallback_retry_after_s=9)
    )
    board.set("a", calls=2, queued_tokens=50_000, seconds_per_token=1e-4, batches_measured=1)
    board.set("b", calls=0)
    adm.check(["a", "b"])
    board.set("b", calls=2, queued_tokens=20_000, seconds_per_token=1e-4, batches_measured=1)
    with pytest.raises(Overloaded) as refused:
        adm.check(["a", "b"])
    # The soonest to drain (b: 2 s, a: 5 s) sets the wait and the status choice.
    assert refused.value.retry_after_s == 2 and refused.value.throttle
    assert adm.soonest_retry_after_s(["a", "b"]) == 2


def test_a_model_without_a_bound_is_never_refused():
    board = FakeBoard()
    board.set("x", calls=10**6)
    admission(board).check(["x"])


def test_admitted_requests_hold_their_place_before_they_reach_the_model():
    """With the real load board: requests admitted but still being read, parsed or
    tokenized count against the bound, so a burst cannot all pass admission at once."""
    board = LoadBoard(["a"])
    adm = Admission(board, {"a": QueueBound(max_ongoing_requests=1, max_queued_requests=1)})
    with ExitStack() as held:
        held.enter_context(adm.reserve(["a"]))
        adm.check(["a"])
        held.enter_context(adm.reserve(["a"]))
        with pytest.raises(Overloaded):
            adm.check(["a"])
        with pytest.raises(Overloaded):
            adm.reserve(["a"])
        # Their calls, once dispatched, are the same requests: not counted twice.
        held.enter_context(board.dispatched("a", 10))
        held.enter_context(board.dispatched("a", 10))
        assert board.requests_in_flight("a") == 2
    adm.check(["a"])
    assert board.requests_in_flight("a") == 0 and board.admitted == {"a": 0}


def test_one_model_the_place_the_edge_took_is_kept_and_not_judged_again():
    board = FakeBoard()
    adm = admission(board, a=QueueBound(max_ongoing_requests=1, max_queued_requests=1))
    board.set("a", calls=0, replicas=1)
    first, second = adm.reserve(["a"]), adm.reserve(["a"])
    assert (first.model, board.calls["a"]) == ("a", 2)
    with pytest.raises(Overloaded):
        adm.reserve(["a"])  # the third is refused before its body
    assert board.calls["a"] == 2
    # After the parse the service takes the place over: no second judgement, even though
    # the model now counts as full (the places are the edge's own).
    assert adm.assign(first, "a") is first and board.calls["a"] == 2
    first.release()
    first.release()  # given back exactly once, however many layers see the end
    assert board.calls["a"] == 1
    with second:
        pass
    assert board.calls["a"] == 0 and not second.held


def test_several_models_the_edge_holds_a_place_in_their_pool_until_the_parse():
    board = FakeBoard()
    adm = admission(board, a=QueueBound(1, 1), b=QueueBound(1, 0))  # 2 + 1 free places
    board.set("a")
    board.set("b")
    places = [adm.reserve(["a", "b"]) for _ in range(3)]
    assert adm.pooled == 3 and board.calls == {"a": 0, "b": 0}
    with pytest.raises(Overloaded, match="free places are all taken"):
        adm.reserve(["a", "b"])
    # The parse names the model: the pooled place becomes one on it, checked now.
    on_b = adm.assign(places[0], "b")
    assert (on_b.model, adm.pooled, board.calls["b"]) == ("b", 2, 1)
    assert not places[0].held
    with pytest.raises(Overloaded):
        adm.assign(places[1], "b")  # b is full: refused after the parse, place given back
    assert adm.pooled == 1 and not places[1].held
    on_a = adm.assign(places[2], "a")
    for place in (on_b, on_a, *places):
        place.release()
    assert adm.pooled == 0 and board.calls == {"a": 0, "b": 0}


def test_an_unbounded_model_never_runs_out_of_pooled_places():
    board = FakeBoard()
    adm = admission(board, a=QueueBound(1, 0), b=QueueBound(1, -1))
    board.set("a", calls=1)
    board.set("b", calls=1000)
    places = [adm.reserve(["a", "b"]) for _ in range(50)]
    assert adm.pooled == 50
    for place in places:
        place.release()
    assert adm.pooled == 0


def test_auto_keeps_a_place_on_an_eligible_model_and_otherwise_holds_none():
    board = FakeBoard()
    adm = admission(board, a=QueueBound(1, 1), b=QueueBound(1, 1))
    board.set("a")
    board.set("b")
    single = adm.reserve(["a"])
    assert adm.assign_any(single, ["a"]) is single and board.calls["a"] == 1
    single.release()
    pooled = adm.reserve(["a", "b"])
    unplaced = adm.assign_any(pooled, ["a", "b"])
    assert not unplaced.held and not pooled.held and adm.pooled == 0
    assert board.calls == {"a": 0, "b": 0}


def test_serves_own_queue_bound_leaves_room_above_admissions():
    # Admission allows at most max_replicas x 4 + 8 calls per ingress; Serve refuses
    # only past twice that.
    assert serve_queue_bound(4, 8, max_replicas=1) == 24
    assert serve_queue_bound(4, 8, max_replicas=3) == 40
    assert serve_queue_bound(4, -1, max_replicas=3) == -1


def test_work_admitted_but_not_yet_dispatched_counts_against_max_queue_wait():
    board = FakeBoard()
    bound = QueueBound(max_ongoing_requests=100, max_queued_requests=-1, max_queue_wait_s=2.0)
    adm = admission(board, a=bound)
    board.set("a", queued_tokens=15_000, seconds_per_token=1e-4, batches_measured=5)
    adm.check(["a"])  # 1.5 s queued
    board.undispatched["a"] = 10_000.0  # places held by requests still being parsed
    with pytest.raises(Overloaded, match="needs 2.5s") as refused:
        adm.check(["a"])
    assert refused.value.retry_after_s == 3


def test_the_board_estimates_undispatched_work_from_recent_calls():
    board = LoadBoard(["a"])
    adm = Admission(board, {"a": QueueBound(max_ongoing_requests=8, max_queued_requests=8)})
    assert board.undispatched_tokens("a") == 0  # no call yet: nothing to go by
    with board.dispatched("a", 100):
        pass
    places = [adm.reserve(["a"]) for _ in range(3)]
    with board.dispatched("a", 100):  # one of the three has reached the model
        assert board.undispatched_tokens("a") == 2 * 100
    for place in places:
        place.release()
    assert board.undispatched_tokens("a") == 0
