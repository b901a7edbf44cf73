"""Windowed per-entity features (driftloop.features.windows): hand-computed cases per aggregate and window
kind, defaults, None handling, late events, restart from JSON state, bounded state, and a cross-check
of every registered aggregation, in every window kind, against the brute-force reference on random streams."""

from __future__ import annotations

import json
import math
import random

import pytest

from driftloop.features.aggregations import AGGREGATIONS
from driftloop.features.reference import ReferenceComputer
from driftloop.features.windows import DEFAULT_MAX_ENTRIES, FeatureComputer
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec
from tests.support.windows import AGGS, WINDOWS, feature, window_spec


def all_aggs(window: dict) -> list[dict]:
    return [{"name": agg, "agg": agg, **({} if agg == "count" else {"field": "x"}), "window": window} for agg in AGGS]


def run(computer: FeatureComputer, events, state=None) -> list[dict[str, float]]:
    out = []
    for t, x in events:
        state, feats = computer.update(state, t, {"x": x})
        out.append(feats)
    return out


def rows(feats: list[dict[str, float]], names=AGGS) -> list[tuple]:
    return [tuple(f[n] for n in names) for f in feats]


# -- hand-computed sequences ----------------------------------------------------------------------------


def test_sliding_window_includes_exactly_the_events_in_t_minus_size_to_t():
    fc = FeatureComputer(window_spec(all_aggs({"size": "10s"})))
    feats = run(fc, [(0, 1.0), (4, 3.0), (9, 2.0), (10, 5.0), (25, 4.0)])
    #            count sum  mean    max  min  ratio (value / mean of the earlier events in the window)
    assert rows(feats) == [
        (1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        (2.0, 4.0, 2.0, 3.0, 1.0, 3.0),  # 3 / mean(1)
        (3.0, 6.0, 2.0, 3.0, 1.0, 1.0),  # 2 / mean(1, 3)
        (3.0, 10.0, 10 / 3, 5.0, 2.0, 2.0),  # (0, 10]: t=0 has left; 5 / mean(3, 2)
        (1.0, 4.0, 4.0, 4.0, 4.0, 1.0),  # (15, 25]: only itself
    ]
    assert all(type(v) is float for f in feats for v in f.values())
    assert list(feats[0]) == list(AGGS)  # spec order


def test_tumbling_window_is_the_aligned_bucket_containing_the_event():
    fc = FeatureComputer(window_spec(all_aggs({"size": "10s", "kind": "tumbling"})))
    feats = run(fc, [(0, 1.0), (9.5, 2.0), (10, 4.0), (19, 1.0), (20, 3.0), (47, 6.0)])
    assert rows(feats) == [
        (1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        (2.0, 3.0, 1.5, 2.0, 1.0, 2.0),  # [0, 10)
        (1.0, 4.0, 4.0, 4.0, 4.0, 1.0),  # 10 opens [10, 20)
        (2.0, 5.0, 2.5, 4.0, 1.0, 0.25),  # 1 / mean(4)
        (1.0, 3.0, 3.0, 3.0, 3.0, 1.0),  # [20, 30)
        (1.0, 6.0, 6.0, 6.0, 6.0, 1.0),  # [40, 50)
    ]


def test_hopping_window_is_the_size_long_window_ending_with_the_events_step_bucket():
    # size 30, step 10: an event at t is in [end - 30, end) with end = (floor(t / 10) + 1) * 10
    fc = FeatureComputer(window_spec(all_aggs({"size": "30s", "kind": "hopping", "step": "10s"})))
    feats = run(fc, [(5, 1.0), (15, 2.0), (29.5, 3.0), (30, 4.0), (39, 10.0), (40, 1.0), (65, 2.0), (100, 7.0)])
    assert [pytest.approx(r) for r in rows(feats)] == [
        (1.0, 1.0, 1.0, 1.0, 1.0, 1.0),  # [-20, 10)
        (2.0, 3.0, 1.5, 2.0, 1.0, 2.0),  # [-10, 20)
        (3.0, 6.0, 2.0, 3.0, 1.0, 2.0),  # [0, 30): 3 / mean(1, 2)
        (3.0, 9.0, 3.0, 4.0, 2.0, 1.6),  # [10, 40): t=5 has left; 4 / mean(2, 3)
        (4.0, 19.0, 4.75, 10.0, 2.0, 10 / 3),  # [10, 40)
        (4.0, 18.0, 4.5, 10.0, 1.0, 3 / 17),  # [20, 50): 1 / mean(3, 4, 10)
        (2.0, 3.0, 1.5, 2.0, 1.0, 2.0),  # [40, 70): 40 and 65
        (1.0, 7.0, 7.0, 7.0, 7.0, 1.0),  # [80, 110)
    ]


def test_hopping_window_whose_size_is_not_a_multiple_of_its_step_is_exact():
    # size 25, step 10: the event at 21 is in [5, 30); 4.9 is out, 5 is in
    fc = FeatureComputer(
        window_spec([{"name": "c", "agg": "count", "window": {"size": "25s", "kind": "hopping", "step": "10s"}}])
    )
    feats = run(fc, [(4.9, 1.0), (5, 1.0), (21, 1.0), (29.9, 1.0), (30, 1.0)])
    assert [f["c"] for f in feats] == [1.0, 2.0, 2.0, 3.0, 3.0]  # 30 is in [15, 40): 21, 29.9, 30


def test_time_since_last_and_first_event_defaults():
    spec = window_spec(all_aggs({"size": "1m"}) + [{"name": "since", "agg": "time_since_last"}], ttl="1h")
    fc = FeatureComputer(spec)
    state, first = fc.update(None, 1000.0, {"x": None})
    # the first event: count 1, nothing to sum/average/compare, time_since_last = feature_ttl ("long ago")
    assert first == {
        "count": 1.0,
        "sum": 0.0,
        "mean": 0.0,
        "max": 0.0,
        "min": 0.0,
        "ratio_to_mean": 1.0,
        "since": 3600.0,
    }
    state, f = fc.update(state, 1012.5, {"x": 4.0})
    assert f["since"] == 12.5 and f["ratio_to_mean"] == 1.0  # no earlier value in the window
    state, f = fc.update(state, 1012.5, {"x": 2.0})
    assert f["since"] == 0.0 and f["ratio_to_mean"] == 0.5
    state, f = fc.update(state, 1012.5 + 7200, {"x": 1.0})
    assert f["since"] == 3600.0  # capped at feature_ttl

    _, first = fc.update(None, 5.0, {"x": 3.0})
    assert first == {
        "count": 1.0,
        "sum": 3.0,
        "mean": 3.0,
        "max": 3.0,
        "min": 3.0,
        "ratio_to_mean": 1.0,
        "since": 3600.0,
    }


def test_none_values_are_skipped_but_counted():
    fc = FeatureComputer(window_spec(all_aggs({"size": "10s"})))
    feats = run(fc, [(0, 2.0), (1, None), (2, 4.0), (3, float("nan"))])
    assert rows(feats) == [
        (1.0, 2.0, 2.0, 2.0, 2.0, 1.0),
        (2.0, 2.0, 2.0, 2.0, 2.0, 1.0),  # None: ratio 1.0, other aggregates as before
        (3.0, 6.0, 3.0, 4.0, 2.0, 2.0),  # 4 / mean(2)
        (4.0, 6.0, 3.0, 4.0, 2.0, 1.0),  # NaN counts as None
    ]
    # a missing field is None too; a window holding only None values gives 0.0
    state, f = fc.update(None, 0.0, {})
    state, f = fc.update(state, 1.0, {"x": None})
    assert rows([f]) == [(2.0, 0.0, 0.0, 0.0, 0.0, 1.0)]


def test_ratio_to_mean_is_one_when_the_mean_is_zero():
    fc = FeatureComputer(window_spec(all_aggs({"size": "10s"})))
    feats = run(fc, [(0, 0.0), (1, 0.0), (2, 5.0)])
    assert [f["ratio_to_mean"] for f in feats] == [1.0, 1.0, 1.0]


def test_zero_window_after_cancellation_sums_to_exactly_zero():
    # 0.1 + 0.2 - 0.1 - 0.2 is not 0 in floats; the window must still say 0 once only zeros remain
    fc = FeatureComputer(window_spec(all_aggs({"size": "100s"})))
    events = [(0, 0.1), (1, 0.2)] + [(2 + i, 0.0) for i in range(40)] + [(100.5, 0.0), (101.5, 0.0), (103, 7.0)]
    feats = run(fc, events)
    assert feats[-2]["sum"] == 0.0 and feats[-2]["mean"] == 0.0
    assert feats[-1]["ratio_to_mean"] == 1.0 and feats[-1]["sum"] == 7.0


def test_entities_are_isolated():
    fc = FeatureComputer(window_spec(all_aggs({"size": "10s"}) + [{"name": "since", "agg": "time_since_last"}]))
    a_events = [(0, 1.0), (3, 2.0), (8, 4.0)]
    alone = run(fc, a_events)
    states: dict[str, dict | None] = {"a": None, "b": None}
    interleaved = []
    for i, (t, x) in enumerate(a_events):
        states["b"], _ = fc.update(states["b"], t + 0.5, {"x": 100.0 + i})
        states["a"], f = fc.update(states["a"], t, {"x": x})
        interleaved.append(f)
    assert interleaved == alone
    assert states["b"] is not states["a"]


def test_values_that_are_not_finite_numbers_count_as_none_and_overflow_is_clamped():
    fc = FeatureComputer(window_spec(all_aggs({"size": "10s"})))
    feats = run(fc, [(0, "abc"), (1, float("inf")), (2, True), (3, "2.5")])
    assert rows(feats) == [
        (1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
        (2.0, 0.0, 0.0, 0.0, 0.0, 1.0),
        (3.0, 1.0, 1.0, 1.0, 1.0, 1.0),  # a bool is a number (1.0)
        (4.0, 3.5, 1.75, 2.5, 1.0, 2.5),
    ]
    huge = run(fc, [(0, 1e308), (1, 1e308)])[-1]
    assert huge["sum"] == huge["mean"] == 1.7976931348623157e308 and huge["max"] == 1e308
    with pytest.raises(ValueError, match="finite"):
        fc.update(None, float("nan"), {"x": 1.0})


# -- out-of-order events --------------------------------------------------------------------------------


def test_late_event_in_a_sliding_window_is_computed_as_of_its_own_time_and_counts_for_later_events():
    fc = FeatureComputer(
        window_spec(
            [
                {"name": "c", "agg": "count", "window": {"size": "10s"}},
                {"name": "s", "agg": "sum", "field": "x", "window": {"size": "10s"}},
                {"name": "since", "agg": "time_since_last"},
            ]
        )
    )
    state = None
    for t, x in [(12, 1.0), (20, 2.0)]:
        state, _ = fc.update(state, t, {"x": x})
    state, late = fc.update(state, 15, {"x": 4.0})
    # (5, 15] holds 12 (and not 20, which is later), plus itself; the previous event was at 12
    assert late == {"c": 2.0, "s": 5.0, "since": 3.0}
    state, f = fc.update(state, 21, {"x": 1.0})
    assert f == {"c": 4.0, "s": 8.0, "since": 1.0}  # (11, 21]: 12, 15, 20, 21


def test_late_event_in_tumbling_and_hopping_windows_joins_its_buckets():
    tumbling = FeatureComputer(
        window_spec([{"name": "c", "agg": "count", "window": {"size": "10s", "kind": "tumbling"}}])
    )
    # a bucket holds everything seen in it, also events later than the late one
    assert [f["c"] for f in run(tumbling, [(1, 1.0), (9, 1.0), (5, 1.0), (9.5, 1.0), (10, 1.0)])] == [1, 2, 3, 4, 1]

    hopping = FeatureComputer(
        window_spec([{"name": "c", "agg": "count", "window": {"size": "30s", "kind": "hopping", "step": "10s"}}])
    )
    # late 12 is in [-10, 20): 5 and itself; then 26 is in [0, 30): 5, 12, 25, 26
    assert [f["c"] for f in run(hopping, [(5, 1.0), (25, 1.0), (12, 1.0), (26, 1.0)])] == [1, 2, 2, 4]


def test_events_older_than_every_retained_window_only_affect_their_own_features():
    spec = window_spec(
        [
            {"name": "c", "agg": "count", "window": {"size": "10s", "kind": "tumbling"}},
            {"name": "s", "agg": "sum", "field": "x", "window": {"size": "10s", "kind": "tumbling"}},
        ]
    )
    strict = FeatureComputer(spec)  # allowed_lateness 0: bucket [0, 10) is dropped once 12 arrives
    assert rows(run(strict, [(3, 1.0), (12, 2.0), (8, 5.0), (9, 1.0), (13, 1.0)]), ("c", "s")) == [
        (1.0, 1.0),
        (1.0, 2.0),
        (1.0, 5.0),
        (1.0, 1.0),
        (2.0, 3.0),
    ]  # 8 and 9 are not stored
    lenient = FeatureComputer(spec, allowed_lateness=10)  # keeps what events up to 10 s late need
    assert rows(run(lenient, [(3, 1.0), (12, 2.0), (8, 5.0), (13, 1.0)]), ("c", "s")) == [
        (1.0, 1.0),
        (1.0, 2.0),
        (2.0, 6.0),
        (2.0, 3.0),
    ]


# -- restart, state size --------------------------------------------------------------------------------


def demo_stream(seed: int, n: int, entities: int, late_share: float = 0.05):
    rng = random.Random(seed)
    t = 1_700_000_000.0
    for _ in range(n):
        t += rng.expovariate(1 / 20)
        when = t - rng.uniform(0, 3 * 3600) if rng.random() < late_share else t
        amount = None if rng.random() < 0.05 else round(rng.lognormvariate(3, 1.2), 2)
        yield f"u{rng.randrange(entities)}", round(when, 3), {"amount": amount, "account_age_days": 10}


def test_json_round_trip_of_state_mid_stream_gives_the_same_features_as_an_uninterrupted_run():
    spec = load_spec(DEMO_SPEC)
    events = list(demo_stream(seed=11, n=6000, entities=20))
    uninterrupted = FeatureComputer(spec)
    states: dict = {}
    expected = []
    for user, t, values in events:
        states[user], f = uninterrupted.update(states.get(user), t, values)
        expected.append(f)

    worker = FeatureComputer(spec)
    states = {}
    got = []
    for i, (user, t, values) in enumerate(events):
        if i == len(events) // 2:  # the worker restarts: state comes back from the changelog as JSON
            restored = json.loads(json.dumps(states))
            assert restored == states
            worker = FeatureComputer(load_spec(DEMO_SPEC))
            states = restored
        states[user], f = worker.update(states.get(user), t, values)
        got.append(f)
    assert got == expected
    assert all(math.isfinite(v) and type(v) is float for f in got for v in f.values())


def test_state_stays_bounded_for_one_busy_entity():
    spec = load_spec(DEMO_SPEC)
    fc = FeatureComputer(spec)
    rng = random.Random(3)
    # 50k events at 20 per second: the 1h sliding window would hold all of them
    state = None
    for i in range(50_000):
        state, f = fc.update(state, 1000.0 + i * 0.05, {"amount": rng.uniform(1, 100)})
    sliding, hopping = state["cells"]
    assert all(len(lst) <= DEFAULT_MAX_ENTRIES for lst in sliding)
    assert len(hopping[0]) == 1  # all within one hour
    assert len(json.dumps(state)) < 600_000
    # beyond the cap the count over-counts near the window's trailing edge, never under-counts
    assert 12_000 <= f["txn_count_10m"] <= 12_000 * 1.05
    assert f["secs_since_last_txn"] == pytest.approx(0.05)

    # 50k events over 100 days: entries beyond the largest window are dropped
    state = None
    for i in range(50_000):
        state, f = fc.update(state, 1000.0 + i * 173.0, {"amount": rng.uniform(1, 100)})
    sliding, hopping = state["cells"]
    assert len(sliding[0]) <= 3600 // 173 + 1
    assert len(hopping[0]) <= 24
    assert len(json.dumps(state)) < 3_000
    assert f["txn_count_10m"] == 4.0 and f["amount_max_24h"] > 0


def test_beyond_max_entries_old_entries_merge_and_aggregates_never_under_count():
    spec = window_spec(all_aggs({"size": "100s"}))
    fc = FeatureComputer(spec, max_entries=50)
    exact = FeatureComputer(spec)
    rng = random.Random(8)
    state = exact_state = None
    over = 0
    for i in range(2000):  # 200 events in every window, 4x the cap
        t, x = i * 0.5, rng.uniform(1, 100)
        state, f = fc.update(state, t, {"x": x})
        exact_state, want = exact.update(exact_state, t, {"x": x})
        assert all(len(lst) <= 50 for lst in state["cells"][0])
        # merged onto a grid of 100 s / 25 = 4 s: at most the 8 events of one grid step too many
        assert want["count"] <= f["count"] <= want["count"] + 8
        assert want["sum"] <= f["sum"] + 1e-9
        assert f["max"] >= want["max"] and f["min"] <= want["min"]
        over += f["count"] > want["count"]
    assert over > 100  # the approximation is visible


def test_hopping_window_needing_too_many_buckets_falls_back_to_step_buckets():
    # size 30 / step 7 needs 1 s buckets (30 of them); with max_entries 10 the window is 5 step buckets (35 s)
    spec = window_spec([{"name": "c", "agg": "count", "window": {"size": "30s", "kind": "hopping", "step": "7s"}}])
    assert [f["c"] for f in run(FeatureComputer(spec), [(0, 1.0), (34.5, 1.0)])] == [1.0, 1.0]  # [5, 35)
    assert [f["c"] for f in run(FeatureComputer(spec, max_entries=10), [(0, 1.0), (34.5, 1.0)])] == [1.0, 2.0]


def test_state_of_another_spec_layout_starts_afresh():
    old = FeatureComputer(window_spec(all_aggs({"size": "10s"})))
    state, _ = old.update(None, 0.0, {"x": 1.0})
    new = FeatureComputer(window_spec([{"name": "c", "agg": "count", "window": {"size": "10s", "kind": "tumbling"}}]))
    _, f = new.update(state, 1.0, {"x": 1.0})
    assert f == {"c": 1.0}


# -- cross-check against the brute-force reference (driftloop.features.reference) --------------------------


def cross_check_spec(with_sliding: bool = True):
    """Every registered aggregation over every window (the sliding ones only if with_sliding)."""
    labels = [label for label, window in WINDOWS.items() if with_sliding or window.get("kind") is not None]
    features = {}
    for agg in AGGREGATIONS:
        for label in labels:
            f = feature(agg, label)
            features[f["name"]] = f
    return window_spec(list(features.values()), ttl="1h")


def random_stream(seed: int, n: int, entities: int, disorder: float, dense: bool = False):
    rng = random.Random(seed)
    clock = {f"e{i}": 0.0 for i in range(entities)}
    for _ in range(n):
        entity = f"e{rng.randrange(entities)}"
        r = rng.random()
        gap = (
            rng.uniform(3600, 9000)
            if r < 0.01
            else 0.0
            if r < 0.08
            else rng.uniform(0, 0.5)
            if r < 0.5
            else rng.expovariate(1 / 4)
        )
        if dense and r >= 0.01:  # windows of dozens to hundreds of entries
            gap = rng.uniform(0, 0.6)
        clock[entity] += round(gap, 3)
        t = clock[entity]
        if disorder and rng.random() < 0.15:
            t = round(t - rng.uniform(0, disorder), 3)
        x = None if rng.random() < 0.1 else rng.choice([0.0, round(rng.uniform(-5, 50), 2), float(rng.randrange(1, 9))])
        yield entity, t, x


def assert_matches_reference(spec, lateness: float, stream) -> int:
    """Run the stream through the FeatureComputer and the reference; return how many events were late."""
    fc = FeatureComputer(spec, allowed_lateness=lateness)
    reference = ReferenceComputer(spec, allowed_lateness=lateness)
    names = [f.name for f in spec.features]
    states: dict = {}
    reference_states: dict = {}
    late = 0
    for i, (entity, t, x) in enumerate(stream):
        before = states.get(entity)
        late += before is not None and t < before["latest"]
        states[entity], got = fc.update(before, t, {"x": x})
        reference_states[entity], want = reference.update(reference_states.get(entity), t, {"x": x})
        assert list(got) == names and all(type(v) is float and math.isfinite(v) for v in got.values())
        if not all(math.isclose(got[n], want[n], rel_tol=1e-9, abs_tol=1e-9) for n in names):
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9), f"event {i}: entity {entity} t={t} x={x}"
    return late


@pytest.mark.parametrize(
    ("disorder", "lateness", "with_sliding", "dense"),
    [(0, 0, True, False), (25, 30, True, False), (25, 25, False, False), (25, 30, True, True)],
)
def test_all_aggregations_together_match_the_reference_on_a_random_stream(disorder, lateness, with_sliding, dense):
    late = assert_matches_reference(
        cross_check_spec(with_sliding),
        lateness,
        random_stream(seed=2024, n=4000, entities=4, disorder=disorder, dense=dense),
    )
    assert (late > 100) == bool(disorder)


@pytest.mark.parametrize(
    ("agg", "label"),
    [(agg, label) for agg in AGGREGATIONS for label in (WINDOWS if AGGREGATIONS[agg].windowed else [None])],
)
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_every_registered_aggregation_matches_its_definition_in_every_window_kind_with_late_events(agg, label, dense):
    late = assert_matches_reference(
        window_spec([feature(agg, label)], ttl="1h"),
        30,
        random_stream(seed=7, n=1500, entities=3, disorder=25, dense=dense),
    )
    assert late > 100
