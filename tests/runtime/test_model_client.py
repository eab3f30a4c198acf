"""The model client's call policy (retry, deadlines, failover, shedding) and the
placement/queue config, without Ray running."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError
from ray.serve.exceptions import BackPressureError

from serve_app.config import AppConfig, ModelCallSettings
from serve_app.errors import ModelTimeout, ModelUnavailable, Overloaded
from serve_app.runtime.builder import model_options
from serve_app.runtime.model_client import FailureKind, ModelCaller, classify_serve_error

MODEL = "cross-encoder/ms-marco-TinyBERT-L2-v2"
FAST = ModelCallSettings(timeout_s=0.5, failover_timeout_s=0.05, retry_after_s=2)


class Script:
    """Stands in for a deployment handle: each call plays the next scripted outcome
    (an exception to raise, "hang" to never answer, or a value to return)."""

    def __init__(self, *outcomes: object):
        self.outcomes = list(outcomes)
        self.calls = 0
        self.cancelled = 0

    def __call__(self) -> ScriptedResponse:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        return ScriptedResponse(self, outcome)


class ScriptedResponse:
    def __init__(self, script: Script, outcome: object):
        self.script, self.outcome = script, outcome

    def cancel(self) -> None:
        self.script.cancelled += 1

    def __await__(self):
        return self._run().__await__()

    async def _run(self) -> object:
        if self.outcome == "hang":
            await asyncio.Event().wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def call(caller: ModelCaller, script: Script) -> object:
    return asyncio.run(caller.call(MODEL, script))


def test_classifies_ray_serve_errors():
    assert classify_serve_error(BackPressureError(3, 3)) is FailureKind.OVERLOADED
    assert classify_serve_error(ActorDiedError()) is FailureKind.REPLICA_LOST
    assert classify_serve_error(ActorUnavailableError("gone", None)) is FailureKind.REPLICA_LOST
    assert classify_serve_error(GetTimeoutError()) is FailureKind.REPLICA_LOST
    assert classify_serve_error(ValueError("bug")) is FailureKind.OTHER


def test_success_passes_the_result_through():
    assert call(ModelCaller(FAST), Script("scores")) == "scores"


def test_a_lost_replica_is_retried_once_and_the_retry_answer_is_returned():
    script = Script(ActorDiedError(), "scores")
    assert call(ModelCaller(FAST), script) == "scores"
    assert script.calls == 2


def test_a_second_lost_replica_is_a_503_with_retry_after_and_marks_the_model():
    caller = ModelCaller(FAST)
    script = Script(ActorDiedError(), ActorUnavailableError("gone", None), "late")
    with pytest.raises(ModelUnavailable) as err:
        call(caller, script)
    assert err.value.retry_after_s == 2
    assert script.calls == 2
    assert MODEL in caller.unavailable
    # The next success clears the mark.
    assert call(caller, script) == "late"
    assert MODEL not in caller.unavailable


def test_retry_that_finds_no_replica_fails_fast_with_503_and_cancels_it():
    script = Script(ActorDiedError(), "hang")
    with pytest.raises(ModelUnavailable) as err:
        call(ModelCaller(FAST), script)
    assert err.value.retry_after_s is not None
    assert script.cancelled == 1


def test_a_slow_healthy_model_is_a_504_not_retried():
    script = Script("hang")
    with pytest.raises(ModelTimeout):
        call(ModelCaller(FAST), script)
    assert script.calls == 1 and script.cancelled == 1


def test_while_a_model_has_no_replica_calls_use_the_failover_deadline():
    caller = ModelCaller(ModelCallSettings(timeout_s=3600, failover_timeout_s=0.05))
    caller.unavailable.add(MODEL)
    with pytest.raises(ModelUnavailable):
        call(caller, Script("hang"))  # would hang for an hour under timeout_s


def test_calls_already_waiting_fail_over_once_the_model_has_no_replica():
    """A node dies: one call's retry finds no replica; the calls that were already
    waiting (with the hour-long deadline) give up after the failover deadline too."""
    caller = ModelCaller(ModelCallSettings(timeout_s=3600, failover_timeout_s=0.05))

    async def scenario() -> list[object]:
        waiting = [asyncio.ensure_future(caller.call(MODEL, Script("hang"))) for _ in range(3)]
        await asyncio.sleep(0.01)
        lost = caller.call(MODEL, Script(ActorDiedError(), ActorDiedError()))
        return await asyncio.gather(lost, *waiting, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, ModelUnavailable) for o in outcomes), outcomes
    assert all(o.retry_after_s == 1 for o in outcomes)
    assert caller._waiting == {} or all(not w for w in caller._waiting.values())


def test_calls_waiting_for_a_replica_fail_over_when_serve_reports_none_running():
    """A node dies while no call is on it: the waiting calls see no error; the replica
    count the ingress polls marks the model, and they get a 503 in failover time."""
    caller = ModelCaller(ModelCallSettings(timeout_s=3600, failover_timeout_s=0.05))

    async def scenario() -> list[object]:
        waiting = [asyncio.ensure_future(caller.call(MODEL, Script("hang"))) for _ in range(3)]
        await asyncio.sleep(0)  # let them start waiting
        caller.mark_unavailable(MODEL)
        return await asyncio.gather(*waiting, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, ModelUnavailable) for o in outcomes), outcomes
    assert call(caller, Script("scores")) == "scores"  # a replica is back: served again
    assert MODEL not in caller.unavailable


def test_backpressure_is_shed_at_once_with_the_deployments_status_and_retry_after():
    for status, retry_after_s, waited in [(503, 3.2, 3.2), (429, None, 2)]:
        script = Script(BackPressureError(8, 8, status, retry_after_s))
        with pytest.raises(Overloaded) as err:
            call(ModelCaller(FAST), script)
        assert err.value.throttle is (status == 429)
        assert err.value.retry_after_s == waited
        assert script.calls == 1


def test_a_timeout_inside_the_call_is_a_lost_replica_not_our_deadline():
    script = Script(GetTimeoutError(), "scores")
    assert call(ModelCaller(FAST), script) == "scores"
    assert script.calls == 2


def test_other_failures_are_503_without_retry():
    script = Script(ValueError("bug"), "scores")
    with pytest.raises(ModelUnavailable):
        call(ModelCaller(FAST), script)
    assert script.calls == 1


def test_placement_and_queue_settings_flow_into_deployment_options():
    config = AppConfig.model_validate(
        {
            "model_defaults": {
                "num_gpus": 0.5,
                "max_queued_requests": 16,
                "backpressure": {"status_code": 429, "retry_after_s": 2},
            },
            "ingress": {"resources": {"node:__internal_head__": 0.01}, "max_queued_requests": 64},
            "models": [
                {"name": MODEL},
                {"name": "ms-marco-MiniLM-L2-v2", "resources": {"gpu_pool": 1}},
            ],
        }
    )
    tiny, mini = (m.deployment_options() for m in config.models)
    assert tiny["ray_actor_options"] == {"num_gpus": 0.5, "num_cpus": 1.0}
    assert mini["ray_actor_options"]["resources"] == {"gpu_pool": 1}
    assert tiny["max_queued_requests"] == 16
    assert tiny["backpressure_config"] == {"status_code": 429, "retry_after_s": 2}
    # Deployed with Serve's own bound above the one admission enforces (a backstop).
    ongoing = config.models[0].max_ongoing_requests
    assert model_options(config.models[0])["max_queued_requests"] == 2 * (16 + ongoing)
    ingress = config.ingress.deployment_options()
    assert ingress["ray_actor_options"]["resources"] == {"node:__internal_head__": 0.01}
    assert ingress["max_queued_requests"] == 64
    # Defaults keep Serve's unbounded queue.
    (default,) = AppConfig.model_validate({"models": [{"name": MODEL}]}).models
    assert default.deployment_options()["max_queued_requests"] == -1
    # The autoscaler's look-back window only when set; otherwise Serve's default stands.
    assert "look_back_period_s" not in default.deployment_options()["autoscaling_config"]
    (quick,) = AppConfig.model_validate(
        {"models": [{"name": MODEL, "autoscaling": {"max_replicas": 3, "look_back_period_s": 12}}]}
    ).models
    assert quick.deployment_options()["autoscaling_config"]["look_back_period_s"] == 12


@pytest.mark.parametrize(
    "bad",
    [
        {"max_queued_requests": 0},
        {"backpressure": {"status_code": 500}},
        {"resources": {"head": "lots"}},
    ],
)
def test_bad_queue_and_placement_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        AppConfig.model_validate({"models": [{"name": MODEL, **bad}]})
