"""The circuit breaker of a model version, on a fake clock, and the fallback the router keeps for it."""

from __future__ import annotations

from driftloop.models import registry
from driftloop.models.bootstrap import ensure_champion
from driftloop.models.flavors import new_model
from driftloop.models.routing import ModelRouter
from driftloop.spec import parse_spec
from driftloop.streams.worker.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from tests.support.models import DEMO, TRAIN, TRAIN_Y


def breaker() -> Breaker:
    return Breaker(7, max_error_rate=0.5, max_call_ms=25, failures=3, open_for=10, probe_events=20)


def test_three_slow_calls_open_it_and_a_probe_worth_of_good_events_between_clears_the_count():
    b = breaker()
    assert b.record(100, 0, 0.040, now=0) is None
    assert b.record(100, 0, 0.040, now=1) is None
    assert b.record(20, 0, 0.001, now=2) is None  # 20 good events: the count starts again
    assert b.record(100, 0, 0.040, now=3) is None
    assert b.record(100, 0, 0.040, now=4) is None
    change = b.record(100, 0, 0.040, now=5)
    assert b.state == OPEN
    assert change.action == "breaker_opened" and change.version == 7
    assert "v7 failed 3 scoring calls (last: a call took 40 ms, over the 25 ms budget)" in change.reason


def test_a_few_fast_events_between_slow_calls_prove_nothing():
    b = breaker()
    b.record(100, 0, 0.040, now=0)
    b.record(3, 0, 0.015, now=1)  # a slow model is fast on three events
    b.record(20, 0, 0.100, now=2)
    b.record(2, 0, 0.010, now=3)
    assert b.record(20, 0, 0.100, now=4).action == "breaker_opened"


def test_after_a_failing_call_the_model_scores_only_a_probe_of_each_batch_until_a_good_call():
    b = breaker()
    assert b.admits(500, now=0) == 500
    b.record(500, 0, 0.200, now=0)
    assert b.admits(500, now=1) == 20 and b.state == CLOSED
    b.record(20, 0, 0.001, now=1)
    assert b.admits(500, now=2) == 500 and b.failing == 0


def test_errors_above_the_rate_count_as_failures_and_name_the_error():
    b = breaker()
    b.record(10, 5, 0.001, now=0)  # half the rows: not above the rate
    assert b.failing == 0
    for t in range(3):
        change = b.record(10, 6, 0.001, now=t, error="ValueError: boom")
    assert (
        change.action == "breaker_opened" and "6 of 10 events could not be scored (ValueError: boom)" in change.reason
    )


def test_open_it_admits_nothing_then_probes_that_close_it_when_the_model_recovered():
    b = breaker()
    for t in range(3):
        b.record(100, 0, 1.0, now=t)
    assert b.admits(500, now=5) == 0
    assert b.admits(500, now=12.1) == 20 and b.state == HALF_OPEN
    assert b.record(8, 0, 0.001, now=12.2) is None  # a small batch's probe: not enough yet
    change = b.record(20, 0, 0.002, now=12.3)
    assert b.state == CLOSED and change.action == "breaker_closed"
    assert change.reason.startswith("v7 scored 28 probe events in 3.0 ms without errors")
    assert b.admits(500, now=12.4) == 500


def test_a_failed_probe_opens_it_again_for_another_period_without_a_new_audit():
    b = breaker()
    for t in range(3):
        b.record(100, 0, 1.0, now=t)
    assert b.admits(5, now=12.5) == 5  # fewer events than a probe: all of them
    assert b.record(5, 0, 1.0, now=12.5) is None
    assert b.state == OPEN
    assert b.admits(100, now=22.0) == 0
    assert b.admits(100, now=22.6) == 20


def test_the_router_falls_back_on_the_previous_version_only_when_it_is_not_the_champion(tracking):
    first = ensure_champion(DEMO, tracking).version
    router = ModelRouter(DEMO, tracking)
    router.refresh()
    assert router.fallback is None  # no previous version yet
    model = new_model(DEMO)
    model.learn(TRAIN[:200], TRAIN_Y[:200])
    second = registry.register(model, DEMO, tracking_uri=tracking, reference_rows=TRAIN[:100]).version
    registry.set_alias(DEMO.model.name, "previous", first, tracking_uri=tracking)
    registry.set_alias(DEMO.model.name, "champion", second, tracking_uri=tracking)
    router.refresh()
    assert (router.fallback.variant, router.fallback.version) == ("fallback", first)
    assert router.serving("champion").version == second


def test_a_spec_named_fallback_is_a_cold_start_model_of_version_0_that_learns(tracking):
    spec = parse_spec({**DEMO.model_dump(mode="json"), "slo": {"fallback": "river:logistic_regression"}})
    ensure_champion(spec, tracking)
    router = ModelRouter(spec, tracking)
    router.start()
    try:
        fallback = router.fallback
        assert (fallback.variant, fallback.version, fallback.model.flavor) == ("fallback", 0, "river")
        before = fallback.model.predict_proba(TRAIN[:50]).tolist()
        router.learn(TRAIN[:500], TRAIN_Y[:500], [fallback.created_ms] * 500)
        assert fallback.model.predict_proba(TRAIN[:50]).tolist() != before
        router.refresh()
        assert router.fallback is fallback  # kept across the registry's changes
    finally:
        router.stop()
