"""The latency objective: the batch controller's rules and the burn, on a fake clock."""

from __future__ import annotations

import pytest

from driftloop.errors import DriftloopError
from driftloop.spec import parse_spec
from driftloop.streams.worker.slo import MIN_FETCH_WAIT, SPIN_GUARD, BatchController, SloBurn
from tests.support.models import DEMO


def controller(**kw) -> BatchController:
    options = {"min_batch": 50, "max_batch": 2000, "max_fetch_wait": 0.025, "step": 100, "interval": 1.0}
    return BatchController(0.050, **{**options, **kw})


def test_it_starts_at_full_batches_and_waits_until_its_interval_has_passed():
    c = controller()
    assert c.setting.batch_size == 2000
    c.observe(asked=2000, consumed=2000, service=0.2, latencies=[0.3], now=0.5)
    assert c.setting.batch_size == 2000  # half an interval: no decision yet


def test_without_a_backlog_a_batch_slower_than_half_the_objective_halves_the_batch_down_to_the_floor():
    c = controller()
    sizes = []
    for second in range(1, 8):
        sizes.append(c.observe(asked=c.batch_size, consumed=10, service=0.030, latencies=[0.01], now=second).batch_size)
    assert sizes == [1000, 500, 250, 125, 62, 50, 50]


def test_events_that_waited_in_the_broker_grow_the_batch_even_when_fetches_come_back_short():
    c = controller()
    c.batch_size = 500
    # p99 400 ms, of which the slowest batch took 100 ms: 300 ms waiting, over the other half of 50 ms
    assert c.observe(asked=500, consumed=120, service=0.100, latencies=[0.4] * 10, now=1).batch_size == 600
    # p99 60 ms of which 40 ms service: the batch itself is too slow, so it shrinks
    assert c.observe(asked=600, consumed=120, service=0.040, latencies=[0.06] * 10, now=2).batch_size == 300


def test_behind_a_backlog_full_batches_grow_the_batch_by_the_step_up_to_the_ceiling_however_slow():
    c = controller(max_batch=400)
    c.batch_size = 200
    sizes = [
        c.observe(asked=c.batch_size, consumed=c.batch_size, service=0.300, latencies=[0.5], now=t).batch_size
        for t in range(1, 5)
    ]
    assert sizes == [300, 400, 400, 400]
    assert c.decisions[2] == 2 and c.decisions[3] == 0


def test_a_late_p99_halves_the_fetch_wait_and_a_comfortable_one_grows_it_by_a_millisecond():
    c = controller()
    quick, late = [0.005] * 100, [0.01] * 98 + [0.2, 0.2]
    for t in range(1, 6):
        c.observe(asked=2000, consumed=10, service=0.001, latencies=quick, now=t)
    assert c.fetch_wait == pytest.approx(MIN_FETCH_WAIT + 0.005)
    assert c.observe(asked=2000, consumed=10, service=0.001, latencies=late, now=6).fetch_wait == pytest.approx(
        (MIN_FETCH_WAIT + 0.005) / 2
    )
    assert c.observe(asked=2000, consumed=10, service=0.001, latencies=quick, now=7).fetch_wait == pytest.approx(
        (MIN_FETCH_WAIT + 0.005) / 2 + 0.001
    )


def test_the_fetch_wait_stays_between_its_floor_and_its_maximum():
    c = controller()
    for t in range(1, 40):
        c.observe(asked=2000, consumed=1, service=0.001, latencies=[0.001], now=t)
    assert c.fetch_wait == pytest.approx(0.025)
    for t in range(40, 60):
        c.observe(asked=2000, consumed=1, service=0.001, latencies=[1.0], now=t)
    # shorter waits make batches of a few events, whose fixed costs raise the p99 further
    assert c.fetch_wait == pytest.approx(MIN_FETCH_WAIT)


def test_a_maximum_below_the_floor_wins_but_the_worker_never_spins():
    assert controller(max_fetch_wait=0.002).fetch_wait == pytest.approx(0.002)
    assert controller(max_fetch_wait=0.0).fetch_wait == pytest.approx(SPIN_GUARD)


def test_an_idle_interval_changes_nothing():
    c = controller()
    c.observe(asked=2000, consumed=10, service=0.030, latencies=[0.01], now=1)
    assert c.batch_size == 1000
    assert c.tick(5).batch_size == 1000
    assert c.decisions[3] == 1


def test_burn_is_the_share_over_the_objective_in_the_window_per_allowed_percent():
    burn = SloBurn(0.050, window=60)
    assert burn.observe([0.01] * 95 + [0.2] * 5, now=100.0) == 5
    assert burn.share_over(100.0) == pytest.approx(0.05)
    assert burn.burn_rate(100.0) == pytest.approx(5.0)
    burn.observe([0.01] * 100, now=130.0)
    assert burn.share_over(130.0) == pytest.approx(0.025)
    assert burn.burn_rate(161.5) == 0.0  # the slow second left the window ...
    assert burn.events(161.5) == 100  # ... the quick one is still in it
    assert burn.events(191.0) == 0


def test_the_spec_has_an_slo_by_default_and_explains_a_wrong_one():
    assert DEMO.slo.p99_ms == 50 and DEMO.slo.max_batch == 2000 and DEMO.slo.max_call_ms == 25
    document = DEMO.model_dump(mode="json")
    for slo, expected in (
        ({"min_batch": 500, "max_batch": 100}, "slo.min_batch: 500 is larger than slo.max_batch"),
        ({"p99_ms": 20, "breaker": {"max_call_ms": 40}}, "slo.breaker.max_call_ms: 40 ms is above the objective"),
        ({"fallback": "yesterday"}, "slo.fallback: 'yesterday': give previous"),
        ({"fallback": "onnx:gradient_boosting"}, "onnx models cannot start untrained"),
        ({"window": "2s"}, "slo.window: the burn window must be at least 10s"),
    ):
        with pytest.raises(DriftloopError, match=expected.replace("(", r"\(")):
            parse_spec({**document, "slo": slo}, "s.yaml")
    spec = parse_spec({**document, "slo": {"fallback": "river:logistic_regression", "breaker": {"open_for": "5s"}}})
    assert spec.slo.fallback_model == ("river", "logistic_regression") and spec.slo.breaker.open_for == 5
