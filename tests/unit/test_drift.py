"""Drift detection and the retrain trigger policy, on the demo stream with real Evidently and River.

Streams come from load/generator.py through the worker's own validation and feature code
(`drift_calibration.scored_batches`), scored as the live champion would be: the cold-start River
placeholder learning online, then (after its warm-up) the demo's gradient-boosting ONNX model.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.calculations.stattests import (
    chi_stat_test,
    jensenshannon_stat_test,
    ks_stat_test,
    wasserstein_stat_test,
    z_stat_test,
)
from evidently.presets import DataDriftPreset

from driftloop.load.benchmarks.drift_calibration import BATCH, LABEL_DELAY, demo_stream, scored_batches
from driftloop.load.generator import DriftPlan, FraudStream
from driftloop.models.inputs import rows_to_frame
from driftloop.schema import model_inputs
from driftloop.settings import DEMO_SPEC
from driftloop.spec import Span, load_spec, parse_spec
from driftloop.streams.contracts import iso_time
from driftloop.streams.control.drift.concept import ConceptDriftMonitor
from driftloop.streams.control.drift.data import DataDriftMonitor, html, warmup_seconds
from driftloop.streams.control.drift.detectors import concept_detector
from driftloop.streams.control.drift.quality import QualityMonitor
from driftloop.streams.control.drift.report import build_report, epoch
from driftloop.streams.control.trigger import TriggerPolicy, Warmup
from tests.support.clock import Clock

SPEC = load_spec(DEMO_SPEC)
COLUMNS = model_inputs(SPEC)
NAMES = [c.name for c in COLUMNS]
START = 1_790_000_000.0


def _with_drift(**changes):
    return SPEC.model_copy(update={"drift": SPEC.drift.model_copy(update=changes)})


def _columnar(batches, start: int, stop: int) -> dict[str, list]:
    """Rows start..stop (by event index) of a list of observation batches, columnar."""
    out = {name: [] for name in NAMES}
    for batch, _, _ in batches:
        for name in NAMES:
            out[name].extend(batch["rows"][name])
    return {name: values[start:stop] for name, values in out.items()}


def _frame(columnar: dict[str, list]):
    return rows_to_frame(COLUMNS, [dict(zip(NAMES, values)) for values in zip(*columnar.values())])


# -- data drift (Evidently) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def covariate_stream():
    """A sparse-card stream (one event per 20 s, a card every ~11 h) so the spec's 24 h windows fill
    within 4,320 events; covariate drift (amounts x2.5, more and other countries abroad) from event 11,000."""
    stream = FraudStream(
        seed=3,
        users=2000,
        fraud_rate=0.05,
        events_per_second=0.05,
        drift=DriftPlan("abrupt", 11_000, covariate=True, concept=False),
    )
    return list(scored_batches(SPEC, stream, 13_000))


def test_evidently_flags_a_covariate_shifted_window_but_not_a_same_distribution_one(covariate_stream):
    reference = _frame(_columnar(covariate_stream, 4_500, 9_500))
    same = DataDriftMonitor(SPEC, reference, 1)
    same.add(_columnar(covariate_stream, 10_000, 11_000), START)
    calm = same.evaluate()
    shifted_monitor = DataDriftMonitor(SPEC, reference, 1)
    shifted_monitor.add(_columnar(covariate_stream, 12_000, 13_000), START)
    shifted = shifted_monitor.evaluate()

    assert calm["status"] == shifted["status"] == "evaluated" and calm["reference"] == "model"
    assert not calm["drifted"] and calm["drifted_share"] < SPEC.drift.drifted_share, calm
    assert shifted["drifted"] and shifted["drifted_share"] >= SPEC.drift.drifted_share
    assert {"amount", "country"} <= set(shifted["drifted_columns"])
    # Evidently picked the method per column type and size (5,000 reference rows: distances)
    methods = {name: f["method"] for name, f in shifted["features"].items()}
    assert methods["amount"] == "wasserstein" and methods["country"] == "jensenshannon"
    assert methods["card_present"] == "jensenshannon"
    for feature in shifted["features"].values():
        assert feature["score_kind"] == "distance" and feature["drifted"] == (feature["score"] >= feature["threshold"])
    json.dumps(shifted)  # goes into a JSON drift report as is

    # The stat tests are exactly those of Evidently's DataDriftPreset: same methods, same scores.
    definition = DataDefinition(
        numerical_columns=[c.name for c in COLUMNS if c.kind == "numeric"],
        categorical_columns=[c.name for c in COLUMNS if c.kind != "numeric"],
    )
    current = _frame(_columnar(covariate_stream, 12_000, 13_000))
    snapshot = (
        Report([DataDriftPreset()])
        .run(
            Dataset.from_pandas(_objects(current), data_definition=definition),
            Dataset.from_pandas(_objects(reference), data_definition=definition),
        )
        .dict()
    )
    preset = {
        m["config"]["column"]: (m["config"]["method"], m["value"])
        for m in snapshot["metrics"]
        if m["config"]["type"].endswith("ValueDrift")
    }
    for name, feature in shifted["features"].items():
        assert preset[name][0] == feature["method_name"]
        assert preset[name][1] == pytest.approx(feature["score"], abs=1e-6)


def _objects(frame):
    out = frame.copy()
    for c in COLUMNS:
        if c.kind != "numeric":
            out[c.name] = out[c.name].astype(object).where(out[c.name].notna(), None)
    return out


def test_each_stat_tests_threshold_is_a_spec_key(covariate_stream):
    reference = _frame(_columnar(covariate_stream, 4_500, 9_500))
    document = yaml.safe_load(DEMO_SPEC.read_text())
    document["drift"]["data_thresholds"] = {"wasserstein": 0.01, "jensenshannon": 0.01}
    strict = parse_spec(document)
    verdicts = []
    for spec in (SPEC, strict):
        monitor = DataDriftMonitor(spec, reference, 1)
        monitor.add(_columnar(covariate_stream, 10_000, 11_000), START)  # a calm window
        verdicts.append(monitor.evaluate())
    calm, flagged = verdicts
    assert not calm["drifted"] and flagged["drifted"] and flagged["drifted_share"] > calm["drifted_share"]
    assert calm["features"]["amount"]["threshold"] == 0.2 and flagged["features"]["amount"]["threshold"] == 0.01
    assert flagged["features"]["country"]["threshold"] == 0.01
    # unset, each threshold is Evidently's own default, except the calibrated Wasserstein one
    evidently = {
        test.name: test.default_threshold
        for test in (wasserstein_stat_test, jensenshannon_stat_test, ks_stat_test, chi_stat_test, z_stat_test)
    }
    assert SPEC.drift.data_thresholds.model_dump() == {**evidently, "wasserstein": 0.2}


def test_html_report_for_a_retraining_run(covariate_stream):
    page = html(
        SPEC, _frame(_columnar(covariate_stream, 4_500, 9_500)), _frame(_columnar(covariate_stream, 12_000, 13_000))
    )
    assert "<html" in page[:1000].lower()
    assert "amount_sum_1h" in page and "country" in page


def test_a_cold_start_reference_is_observed_after_the_longest_window_has_filled(covariate_stream):
    spec = _with_drift(reference_size=1000, window_events=500, evaluate_every=(Span(events=250),))
    monitor = DataDriftMonitor(spec, rows_to_frame(COLUMNS, []), 1)
    assert warmup_seconds(spec) == 24 * 3600
    times = [START + 1000.0 * i for i in range(200)]  # each 100-event batch ends 1,000 s after the previous
    statuses = []
    for i, (batch, _, _) in enumerate(covariate_stream[:110]):
        monitor.add(batch["rows"], times[i])
        if monitor.due():
            statuses.append((times[i] - times[0], monitor.evaluate()))
    waiting = [s for t, s in statuses if t < warmup_seconds(spec)]
    assert waiting and all(s["status"] == "collecting_reference" and s["drifted_share"] is None for s in waiting)
    assert waiting[-1]["reference_rows"] == 0  # rows from the warm-up never join the reference
    evaluated = [s for _, s in statuses if s["status"] == "evaluated"]
    assert evaluated and evaluated[0]["reference"] == "observed" and evaluated[0]["reference_rows"] == 1000


def test_evaluations_are_due_every_n_events_or_event_time_with_new_rows_and_a_full_window(covariate_stream):
    reference = _frame(_columnar(covariate_stream, 4_500, 9_500))
    spec = _with_drift(evaluate_every=(Span.model_validate("500 events"), Span.model_validate("1h")))
    monitor = DataDriftMonitor(spec, reference, 1)
    rows = _columnar(covariate_stream, 5_000, 7_500)
    chunk = lambda a, b: {name: values[a:b] for name, values in rows.items()}  # noqa: E731
    monitor.add(chunk(0, 900), START)
    assert not monitor.due() and not monitor.ready()  # 900 < window_events
    monitor.add(chunk(900, 1000), START + 10)
    assert monitor.due() and monitor.ready()
    window = monitor.window_info()
    assert window == {"events": 1000, "first_event_time": iso_time(START), "last_event_time": iso_time(START + 10)}
    monitor.evaluate()
    monitor.add(chunk(1000, 1499), START + 20)
    assert not monitor.due()
    monitor.add(chunk(1499, 1500), START + 30)
    assert monitor.due()  # 500 new rows
    monitor.evaluate()
    monitor.add(chunk(1500, 1505), START + 3600)
    assert not monitor.due()  # 5 rows, and the hour of event time since the evaluation is not over
    monitor.add(chunk(1505, 1510), START + 30 + 3600)
    assert monitor.due()  # an hour of event time since the last evaluation, with new rows
    assert monitor.window_info()["first_event_time"] == iso_time(START)  # 390 rows of the first batch remain
    monitor.add(chunk(1510, 2010), START + 50 + 3600)
    assert monitor.window_info() == {
        "events": 1000,
        "first_event_time": iso_time(START + 20),
        "last_event_time": iso_time(START + 50 + 3600),
    }  # the oldest batches slid out
    assert monitor.current_rows() == chunk(1010, 2010)


# -- concept drift (River) ---------------------------------------------------------------------------


def _detections(batches, monitor):
    found = []
    for _, labeled, events in batches:
        for record in labeled:
            detection = monitor.update(record)
            if detection is not None:
                found.append((events, detection))
    return found


def test_concept_drift_is_detected_within_2000_events_of_the_onset():
    onset = 15_000
    stream = demo_stream(5, DriftPlan("abrupt", onset, concept=True))
    batches = list(scored_batches(SPEC, stream, onset + 2_000))
    found = _detections(batches, ConceptDriftMonitor(SPEC))
    assert found, "no concept drift detected within 2,000 events of the onset"
    events, detection = found[0]
    assert onset < events <= onset + 2_000  # nothing before: the cold-start model improving does not count
    onset_time = epoch(stream.take(onset + 1)[onset][0]["event_time"])
    assert detection["version"] == 1 and detection["variant"] == "champion" and detection["detector"] == "adwin"
    assert detection["loss_after"] > detection["loss_before"]
    assert events - LABEL_DELAY - BATCH < detection["at_event"] <= events - LABEL_DELAY
    # the estimated onset (where training should start) is within 500 events of the real one
    seconds_per_event = 1 / stream.events_per_second
    assert abs(epoch(detection["change_point_event_time"]) - onset_time) <= 500 * seconds_per_event
    assert epoch(detection["window_start_event_time"]) <= epoch(detection["change_point_event_time"])


def test_a_stationary_stream_and_an_improving_online_model_raise_no_concept_drift():
    batches = list(scored_batches(SPEC, demo_stream(8), 50_000))
    assert _detections(batches, ConceptDriftMonitor(SPEC)) == []
    errors = [int(r["decision"] != r["label"]) for _, labeled, _ in batches for r in labeled]
    assert sum(errors[:2000]) / 2000 > 2 * sum(errors[-20000:]) / 20000  # the model did improve meanwhile


def test_page_hinkley_and_log_loss_and_forgetting_a_version():
    spec = _with_drift(concept=concept_detector({"detector": "page_hinkley", "loss": "log_loss"}))
    monitor = ConceptDriftMonitor(spec)
    t = 0

    def record(version, label, score):
        nonlocal t
        t += 1
        return {
            "model_version": version,
            "variant": "canary",
            "label": label,
            "score": score,
            "decision": int(score >= 0.5),
            "event_time": iso_time(START + t),
        }

    for _ in range(3000):  # a good model...
        assert monitor.update(record(2, 0, 0.05)) is None
    found = None
    for _ in range(500):  # ...that turns confidently wrong
        found = found or monitor.update(record(2, 1, 0.05))
    assert found is not None and found["detector"] == "page_hinkley" and found["variant"] == "canary"
    assert found["loss_before"] == pytest.approx(-math.log(0.95), abs=1e-3)
    assert found["loss_after"] == pytest.approx(spec.drift.concept.loss_cap)  # -log(0.05), capped
    assert epoch(found["change_point_event_time"]) == pytest.approx(START + 3000, abs=2)
    monitor.forget(2)
    assert monitor.update(record(2, 1, 0.05)) is None  # starts over, nothing to compare with


# -- quality drift -----------------------------------------------------------------------------------


def test_quality_rates_over_a_sliding_window_of_batches():
    quality = QualityMonitor(SPEC)
    ok = {"valid": 500, "dlq": {}, "unseen": {}, "missing": {"account_age_days": 25}}
    quality.add(ok)
    quality.add(ok)
    clean = quality.evaluate()
    assert clean["missing_rate"] == 0.05 and clean["dlq_rate"] == 0.0 and clean["flagged"] == []
    quality.add(
        {
            "valid": 400,
            "dlq": {"out_of_range": 80, "invalid_json": 20},
            "unseen": {"country": 60, "channel": 4},
            "missing": {},
        }
    )
    bad = quality.evaluate()
    # window_events is 1,000: the first batch slid out; 500 + 500 input events remain
    assert bad["events"] == 1000 and bad["valid"] == 900 and bad["events_total"] == 1500
    assert bad["unseen"] == {"channel": round(4 / 900, 5), "country": round(60 / 900, 5)}
    assert bad["unseen_rate"] == round(60 / 900, 5)  # the worst field
    assert bad["missing_rate"] == round(25 / 900, 5)
    assert bad["out_of_range_rate"] == 0.08 and bad["dlq_rate"] == 0.1
    assert bad["flagged"] == ["unseen_rate", "dlq_rate"]
    assert bad["limits"] == {"unseen_rate": 0.05, "missing_rate": 0.2, "dlq_rate": 0.05}


# -- the trigger policy ------------------------------------------------------------------------------


def _data(drifted: bool, share: float | None = None) -> dict:
    share = share if share is not None else (0.25 if drifted else 0.0)
    return {
        "status": "evaluated",
        "reference": "model",
        "reference_rows": 5000,
        "window_events": 1000,
        "threshold_share": 0.15,
        "drifted_share": share,
        "drifted": drifted,
        "drifted_columns": ["amount", "country", "amount_sum_1h"] if drifted else [],
        "features": {},
    }


def _quality(events_total: int = 0, flagged=()) -> dict:
    quality = QualityMonitor(SPEC).evaluate()
    quality.update(events_total=events_total, flagged=list(flagged))
    if "unseen_rate" in flagged:
        quality["unseen_rate"] = 0.12
    return quality


def _report(n: int, *, drifted=False, detections=(), champion=3, quality=None, first=START):
    return build_report(
        SPEC,
        champion_version=champion,
        evaluation=n,
        data=_data(drifted),
        window={"events": 1000, "first_event_time": iso_time(first + n), "last_event_time": iso_time(first + n + 500)},
        detections=list(detections),
        quality=quality or _quality(),
        at=START + n,
    )


def _detection(version: int = 3) -> dict:
    return {
        "version": version,
        "variant": "champion",
        "detector": "adwin",
        "loss": "log_loss",
        "at_event": 18234,
        "change_point_event_time": iso_time(START - 900),
        "window_start_event_time": iso_time(START - 5000),
        "loss_before": 0.045,
        "loss_after": 0.121,
    }


AUDIT_KEYS = {"contract", "at", "actor", "action", "model_name", "version", "reason", "details"}
DETAIL_KEYS = {
    "decision",
    "reason_code",
    "declined",
    "evaluation",
    "consecutive_drifted_windows",
    "sustained_windows",
    "drifted_share",
    "drifted_columns",
    "concept_detections",
    "quality_flagged",
    "request_id",
    "train_from",
    "in_flight_request",
    "cooldown_left",
}


def _audit(decision) -> dict:
    record = json.loads(decision.audit)
    assert set(record) == AUDIT_KEYS and set(record["details"]) == DETAIL_KEYS
    assert record["actor"] == "trigger" and record["model_name"] == SPEC.model.name
    assert record["reason"] == decision.sentence
    return record


def test_data_drift_triggers_only_when_sustained():
    policy = TriggerPolicy(SPEC, clock=Clock(START))
    first = policy.decide(_report(1, drifted=True))
    second = policy.decide(_report(2, drifted=True))
    assert not first.trigger and first.declined == "not_sustained" and "1/3" in first.sentence
    assert not second.trigger and "2/3" in second.sentence and second.noteworthy
    assert policy.state()["consecutive_drifted_windows"] == 2
    calm = policy.decide(_report(3, drifted=False))  # a calm window breaks the run
    assert calm.declined == "no_drift" and policy.state()["consecutive_drifted_windows"] == 0
    for n in (4, 5):
        assert not policy.decide(_report(n, drifted=True)).trigger
    rows = {"amount": [1.0, 2.0]}
    decision = policy.decide(_report(6, drifted=True), current_rows=rows)
    assert decision.trigger and decision.reason == "data_drift" and decision.noteworthy
    assert decision.train_from == START + 4  # the first window of the sustained run
    audit = _audit(decision)
    assert audit["action"] == "retrain_triggered" and audit["version"] == 3
    assert audit["details"]["request_id"] == decision.request_id and audit["details"]["train_from"] == iso_time(
        START + 4
    )
    request = json.loads(decision.request)
    assert request["reason"] == "data_drift" and request["request_id"] == decision.request_id
    assert request["champion_version"] == 3 and request["train_from"] == iso_time(START + 4)
    assert request["current_rows"] == rows and request["drift_report"]["evaluation"] == 6


def test_a_concept_detection_on_the_champion_triggers_at_once():
    policy = TriggerPolicy(SPEC, clock=Clock(START))
    canary_only = policy.decide(_report(1, detections=[_detection(version=4)]))
    assert not canary_only.trigger and canary_only.declined == "no_drift"
    decision = policy.decide(_report(2, detections=[_detection()]), current_rows={})
    assert decision.trigger and decision.reason == "concept_drift"
    assert decision.train_from == START - 900
    assert "the log loss rose from 0.045 to 0.121" in decision.sentence
    assert json.loads(decision.request)["reason"] == "concept_drift"
    assert _audit(decision)["details"]["concept_detections"] == [_detection()]


def test_schedule_fallback_every_n_events_or_event_time():
    clock = Clock(START)
    every = (Span.model_validate("10000 events"), Span.model_validate("3h"))
    policy = TriggerPolicy(_with_drift(schedule_every=every), clock=clock)
    assert policy.decide(_report(1, quality=_quality(events_total=500))).declined == "no_drift"
    assert not policy.decide(_report(2, quality=_quality(events_total=10_400))).trigger
    decision = policy.decide(_report(3, quality=_quality(events_total=10_500)))
    assert decision.trigger and decision.reason == "schedule" and decision.train_from is None
    assert "scheduled every 10000 events" in decision.sentence
    policy.retrain_finished(4, "challenger_set")
    clock.now += SPEC.drift.cooldown.seconds + 1
    assert not policy.decide(_report(4, quality=_quality(events_total=12_000))).trigger  # counted from the finish
    clock.now += 3600
    scheduled = policy.decide(_report(5, quality=_quality(events_total=12_100)))
    assert scheduled.reason == "schedule" and "scheduled every 3h, 1,600 events and 3h of event time" in (
        scheduled.sentence
    )


def test_one_retraining_in_flight_then_a_cooldown_in_event_time_whatever_the_wall_clock():
    wall, events = Clock(START + 10**8), Clock(START)
    policy = TriggerPolicy(SPEC, clock=wall, event_clock=events)  # the demo's cooldown: 2h of event time
    first = policy.decide(_report(1, detections=[_detection()]))
    assert first.trigger
    blocked = policy.decide(_report(2, detections=[_detection()]))
    assert not blocked.trigger and blocked.declined == "in_flight" and first.request_id in blocked.sentence
    assert _audit(blocked)["action"] == "retrain_declined"
    assert policy.state()["in_flight"]["request_id"] == first.request_id

    policy.retrain_finished(4, "challenger_set")
    state = policy.state()
    assert state["in_flight"] is None and state["cooldown_left"] == "2h of event time"
    assert state["last_finished"]["request_id"] == first.request_id
    assert json.loads(first.audit)["at"] == iso_time(START + 10**8)  # records are stamped by the wall clock
    events.now += 3600
    wall.now += 30 * 86400  # a month of wall time changes nothing: a replay runs years in minutes
    for n in (3, 4, 5):  # data drift keeps counting during the cooldown
        cooling = policy.decide(_report(n, drifted=True))
    assert not cooling.trigger and cooling.declined == "cooldown"
    assert "drift.cooldown 2h): 1h of event time left" in cooling.sentence
    events.now += 3601
    after = policy.decide(_report(6, drifted=True))
    assert after.trigger and after.reason == "data_drift"  # the drift outlasted the cooldown
    assert policy.state()["last_decision"]["request_id"] == after.request_id


def test_a_cooldown_in_events_counts_input_events_whatever_the_clocks_say():
    wall, events = Clock(START), Clock(START)
    spec = _with_drift(cooldown=Span.model_validate("2000 events"))
    policy = TriggerPolicy(spec, clock=wall, event_clock=events)
    assert policy.decide(_report(1, detections=[_detection()], quality=_quality(events_total=1000))).trigger
    policy.retrain_finished(4, "challenger_set")  # at 1,000 input events
    wall.now += 365 * 86400
    events.now += 365 * 86400
    cooling = policy.decide(_report(2, detections=[_detection()], quality=_quality(events_total=2500)))
    assert cooling.declined == "cooldown" and "(drift.cooldown 2000 events): 500 events left" in cooling.sentence
    assert _audit(cooling)["details"]["cooldown_left"] == "500 events"
    after = policy.decide(_report(3, detections=[_detection()], quality=_quality(events_total=3000)))
    assert after.trigger and policy.state()["cooldown_left"] is None


def test_a_warm_up_in_event_time_waits_for_the_event_time_its_outcomes_span():
    spec = SPEC.model_copy(update={"model": SPEC.model.model_copy(update={"warmup": Span.model_validate("3d")})})
    policy = TriggerPolicy(spec, clock=Clock(START))
    short = policy.decide(_report(1), warmup=Warmup(40_000, START, START + 2 * 86400))
    assert short.declined == "warming_up" and "1d of event time to go (model.warmup 3d)" in short.sentence
    due = policy.decide(_report(2), warmup=Warmup(40_100, START, START + 3 * 86400))
    assert due.trigger and due.reason == "warmup" and due.train_from == START


def test_the_placeholder_champion_is_retrained_once_its_warm_up_is_in_and_no_drift_counts_before():
    clock = Clock(START)
    policy = TriggerPolicy(SPEC, clock=clock)
    needed = SPEC.model.warmup.events
    filling = policy.decide(_report(1, detections=[_detection()]), warmup=Warmup(0, None))
    assert not filling.trigger and filling.declined == "warming_up" and "windows are still filling" in filling.sentence
    short = policy.decide(_report(2, drifted=True), warmup=Warmup(needed - 1, START))
    assert (
        not short.trigger and f"{needed - 1} labelled events with full feature windows, 1 event to go" in short.sentence
    )
    failed = policy.decide(_report(3), warmup=Warmup(needed, START))
    assert failed.trigger and failed.reason == "warmup"
    policy.retrain_finished(None, "retrain_failed")  # a failed warm-up is retried after the cooldown
    assert policy.decide(_report(4), warmup=Warmup(needed + 500, START)).declined == "cooldown"
    clock.now += SPEC.drift.cooldown.seconds + 1
    due = policy.decide(_report(5), current_rows={}, warmup=Warmup(needed + 900, START))
    assert due.trigger and due.reason == "warmup" and due.train_from == START
    assert json.loads(due.request)["reason"] == "warmup" and "first onnx model" in due.sentence
    policy.retrain_finished(2, "promoted")  # the first model: its drift counts from now, no cooldown
    assert policy.state()["in_flight"] is None and policy.state()["cooldown_left"] is None
    policy.reset_for(2)
    assert policy.decide(_report(6, detections=[_detection(version=2)], champion=2)).reason == "concept_drift"


def test_quality_drift_alone_is_audited_but_never_retrains():
    policy = TriggerPolicy(SPEC, clock=Clock(START))
    flagged = _quality(flagged=["unseen_rate"])
    first = policy.decide(_report(1, quality=flagged))
    again = policy.decide(_report(2, quality=flagged))
    assert not first.trigger and first.declined == "quality" and first.request is None
    assert "unseen_rate 0.12 > 0.05" in first.sentence and "fix the producer or the spec" in first.sentence
    assert first.noteworthy and not again.noteworthy  # the same situation is not news
    assert _audit(first)["details"]["quality_flagged"] == ["unseen_rate"]
    for n in (3, 4, 5):  # sustained data drift in windows that fail quality checks: still no retraining
        decision = policy.decide(_report(n, drifted=True, quality=flagged))
    assert not decision.trigger and decision.declined == "quality"


def test_a_new_champion_starts_its_drift_history_over():
    policy = TriggerPolicy(SPEC, clock=Clock(START))
    policy.decide(_report(1, drifted=True))
    policy.decide(_report(2, drifted=True))
    policy.reset_for(4)
    assert policy.state()["consecutive_drifted_windows"] == 0 and policy.state()["champion_version"] == 4
    assert not policy.decide(_report(3, drifted=True, champion=4)).trigger
    quiet = [policy.decide(_report(n, champion=4)) for n in (4, 5, 6)]
    assert quiet[0].noteworthy and not quiet[1].noteworthy and not quiet[2].noteworthy


def test_the_drift_report_is_json_with_the_documented_sections():
    report = _report(7, drifted=True, detections=[_detection()])
    parsed = json.loads(json.dumps(report))
    assert set(parsed) == {
        "contract",
        "at",
        "model_name",
        "champion_version",
        "evaluation",
        "window",
        "data",
        "concept",
        "quality",
    }
    assert parsed["contract"] == 1 and parsed["at"] == iso_time(START + 7) and parsed["evaluation"] == 7
    assert set(parsed["window"]) == {"events", "first_event_time", "last_event_time"}
    assert parsed["concept"] == {"detector": "adwin", "loss": "log_loss", "detections": [_detection()]}
    no_monitor = build_report(
        SPEC, champion_version=None, evaluation=1, data=None, window=None, detections=[], quality=_quality(), at=START
    )
    assert no_monitor["data"]["status"] == "not_evaluated" and no_monitor["window"]["events"] == 0


def test_the_control_plane_skips_records_that_are_not_what_their_topic_carries():
    """`labeled` and the observations topic are open to any producer: junk is counted, never a crash, and a
    labeled event re-emitted after a worker restart reaches the detectors once."""
    from driftloop.streams.control.plane import ControlPlane

    control = ControlPlane(SPEC, "http://127.0.0.1:9")  # the registry is never asked here
    record = {
        "event_id": "e-1",
        "event_time": iso_time(START),
        "predicted_at": iso_time(START + 1),
        "label": 1,
        "decision": 0,
        "score": 0.2,
        "model_version": 3,
        "variant": "champion",
        "features": {},
    }
    junk = [b"", b"\x00", b"[]", b'{"event_id": 1}', json.dumps({**record, "event_time": "soon"}).encode(), None]
    assert control.on_labeled(junk + [json.dumps(record).encode()] * 2) == []
    assert control.on_observations([b"{", b'{"valid": "many"}', None]) == []
    assert control.unreadable == len(junk) + 3
    assert control.concept._versions[3].labeled == 1


def test_the_control_plane_times_its_policy_by_the_newest_event_time_it_observed():
    """A replay runs days of a stream in seconds: the cooldown must end after days of its data, not of wall time."""
    from driftloop.streams.control.plane import ControlPlane

    spec = _with_drift(cooldown=Span.model_validate("1d"))
    control = ControlPlane(spec, "http://127.0.0.1:9")  # the registry is never asked here
    observation = {"valid": 1, "rows": {name: [None] for name in NAMES}, "event_time_max": START}
    control.on_observations([json.dumps(observation).encode()])
    control.policy.retrain_finished(4, "challenger_set")
    assert control.policy.state()["cooldown_left"] == "1d of event time"
    labeled = {
        "event_id": "e-1",
        "event_time": iso_time(START + 20 * 3600),
        "predicted_at": iso_time(START),
        "label": 1,
        "decision": 0,
        "score": 0.2,
        "model_version": 3,
        "variant": "champion",
    }
    control.on_labeled([json.dumps(labeled).encode()])  # outcomes carry event time too
    assert control.event_time() == START + 20 * 3600
    assert control.policy.state()["cooldown_left"] == "4h of event time"
    control.on_observations([json.dumps({**observation, "event_time_max": START + 86400}).encode()])
    assert control.policy.state()["cooldown_left"] is None
