"""The synthetic card-fraud stream: determinism, the demo spec's schema, fraud rate, drift, and producing to Kafka."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from driftloop import kafka
from driftloop.load import generator
from driftloop.load.generator import CATEGORIES, DriftPlan, FraudStream, produce
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec

SPEC = load_spec(DEMO_SPEC)
PATTERN_A_CATEGORIES = ("electronics", "travel", "fashion")  # the fraud before concept drift
PATTERN_B_CATEGORIES = ("digital_goods", "gaming")  # the fraud after it


def _time(text: str) -> datetime:
    assert isinstance(text, str) and text.endswith("Z"), text
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset().total_seconds() == 0
    return parsed


def _conforms(event: dict) -> None:
    fields = SPEC.events.fields
    assert set(event) <= set(fields), f"unknown fields {set(event) - set(fields)}"
    for name, field in fields.items():
        if name not in event:
            assert not field.required, f"required field {name} missing"
            continue
        value = event[name]
        if field.type == "string":
            assert isinstance(value, str) and 0 < len(value) <= field.max_length
        elif field.type == "int":
            assert isinstance(value, int) and not isinstance(value, bool)
        elif field.type == "float":
            assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif field.type == "bool":
            assert isinstance(value, bool)
        elif field.type == "category":
            assert value in field.values, f"{name}={value!r} is not a known category"
        elif field.type == "timestamp":
            _time(value)
        if field.min is not None:
            assert value >= field.min, (name, value)
        if field.max is not None:
            assert value <= field.max, (name, value)


def _fraud_by_category(rows) -> dict[str, float]:
    seen, fraud = Counter(), Counter()
    for event, outcome in rows:
        seen[event["merchant_category"]] += 1
        fraud[event["merchant_category"]] += outcome["is_fraud"]
    return {category: fraud[category] / seen[category] for category in seen}


def _fraud_within(rows, categories) -> float:
    labels = [o["is_fraud"] for e, o in rows if e["merchant_category"] in categories]
    return sum(labels) / len(labels)


def _share(rows, field: str) -> Counter:
    counts = Counter(event[field] for event, _ in rows)
    return Counter({key: n / len(rows) for key, n in counts.items()})


def _total_variation(p: Counter, q: Counter) -> float:
    return sum(abs(p[k] - q[k]) for k in set(p) | set(q)) / 2


def test_same_seed_same_stream_and_other_seeds_differ():
    stream = FraudStream(seed=42, drift=DriftPlan("gradual", 1000, width=1000, covariate=True))
    first = stream.take(3000)
    assert first == FraudStream(seed=42, drift=DriftPlan("gradual", 1000, width=1000, covariate=True)).take(3000)
    assert first == stream.take(3000)  # iterating again starts over
    other = FraudStream(seed=43, drift=DriftPlan("gradual", 1000, width=1000, covariate=True)).take(3000)
    assert [e for e, _ in first] != [e for e, _ in other]


def test_every_event_and_outcome_conforms_to_the_demo_spec():
    rows = FraudStream(seed=5, users=300, drift=DriftPlan("abrupt", 6000, covariate=True)).take(12_000)
    outcome_keys = {SPEC.outcomes.id_field, SPEC.outcomes.label, SPEC.outcomes.time_field}
    previous = None
    for event, outcome in rows:
        _conforms(event)
        assert set(outcome) == outcome_keys
        assert outcome[SPEC.outcomes.id_field] == event[SPEC.events.id_field]
        assert outcome[SPEC.outcomes.label] in (0, 1) and isinstance(outcome[SPEC.outcomes.label], int)
        when = _time(event[SPEC.events.time_field])
        assert _time(outcome[SPEC.outcomes.time_field]) >= when
        assert previous is None or when >= previous  # event time never goes back
        previous = when
    assert len({e["event_id"] for e, _ in rows}) == len(rows)
    assert len({e["user_id"] for e, _ in rows}) <= 300
    missing = sum("account_age_days" not in e for e, _ in rows) / len(rows)
    assert 0.01 < missing < 0.2  # optional, and sometimes missing
    for field in ("merchant_category", "country", "channel"):  # every known value occurs
        assert set(_share(rows, field)) == set(SPEC.events.fields[field].values)
    # round-trips as JSON unchanged
    assert json.loads(generator.encode(rows[0][0])) == rows[0][0]


def test_event_time_advances_in_simulated_time():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for rate in (100.0, 5.0):
        rows = FraudStream(seed=1, start=start, events_per_second=rate).take(5000)
        first, last = _time(rows[0][0]["event_time"]), _time(rows[-1][0]["event_time"])
        assert first >= start
        assert (last - first).total_seconds() == pytest.approx(5000 / rate, rel=0.1)
    assert (
        FraudStream(seed=1).take(1)[0][0]["event_time"].startswith(generator.DEFAULT_START.strftime("%Y-%m-%dT%H:%M"))
    )


@pytest.mark.parametrize("rate", [0.03, 0.1])
def test_fraud_rate_is_roughly_as_configured(rate):
    rows = FraudStream(seed=3, fraud_rate=rate).take(30_000)
    observed = sum(o["is_fraud"] for _, o in rows) / len(rows)
    assert observed == pytest.approx(rate, rel=0.2)
    assert not any(o["is_fraud"] for _, o in FraudStream(seed=3, fraud_rate=0.0).take(5000))


def _burst_features(rows, warmup: int):
    """Per label: seconds since the user's previous transaction, and the user's transactions in the last 10m."""
    last_seen: dict[str, float] = {}
    recent: dict[str, list[float]] = defaultdict(list)
    gaps, counts = {0: [], 1: []}, {0: [], 1: []}
    for index, (event, outcome) in enumerate(rows):
        t = _time(event["event_time"]).timestamp()
        user = event["user_id"]
        previous = last_seen.get(user)
        last_seen[user] = t
        recent[user] = [s for s in recent[user] if t - s <= 600] + [t]
        if index >= warmup and previous is not None:
            gaps[outcome["is_fraud"]].append(t - previous)
            counts[outcome["is_fraud"]].append(len(recent[user]))
    return gaps, counts


def test_fraud_shows_in_the_spec_features():
    """Fraudsters burst (short time since last, more transactions in 10m) with high amounts online, card absent."""
    rows = FraudStream(seed=9).take(25_000)
    gaps, _ = _burst_features(rows, warmup=0)
    assert statistics.median(gaps[1]) < statistics.median(gaps[0]) / 3
    # At a realistic per-card rhythm (one transaction every ~7 min) the 10-minute count stands out too.
    gaps, counts = _burst_features(FraudStream(seed=9, events_per_second=5).take(20_000), warmup=3000)
    assert statistics.median(gaps[1]) < statistics.median(gaps[0]) / 3
    assert statistics.mean(counts[1]) > statistics.mean(counts[0]) * 1.25
    fraud = [e for e, o in rows if o["is_fraud"]]
    legit = [e for e, o in rows if not o["is_fraud"]]
    assert statistics.median(e["amount"] for e in fraud) > 5 * statistics.median(e["amount"] for e in legit)
    assert sum(not e["card_present"] for e in fraud) / len(fraud) > 0.85
    assert sum(e["channel"] != "pos" for e in fraud) / len(fraud) > 0.85
    rates = _fraud_by_category(rows)
    assert min(rates[c] for c in ("electronics", "travel")) > 5 * max(rates[c] for c in ("grocery", "fuel"))


def test_concept_drift_changes_fraud_given_category_but_not_the_inputs():
    rows = FraudStream(seed=11, drift=DriftPlan("abrupt", 20_000)).take(42_000)
    pre, post = rows[:20_000], rows[22_000:]  # skip sessions that straddle the onset
    before, after = _fraud_by_category(pre), _fraud_by_category(post)
    assert before["electronics"] > 0.1 and after["electronics"] < 0.03
    assert before["digital_goods"] < 0.02 and after["digital_goods"] > 0.1
    # P(x) stays put: same category and country mix, same amounts; the fraud rate too.
    for field in ("merchant_category", "country", "channel"):
        assert _total_variation(_share(pre, field), _share(post, field)) < 0.02
    assert statistics.median(e["amount"] for e, _ in post) == pytest.approx(
        statistics.median(e["amount"] for e, _ in pre), rel=0.1
    )
    assert sum(o["is_fraud"] for _, o in post) / len(post) == pytest.approx(0.03, rel=0.25)


def test_covariate_drift_shifts_amounts_and_countries_but_not_the_labelling_rule():
    plan = DriftPlan("abrupt", 20_000, covariate=True, concept=False)
    rows = FraudStream(seed=11, drift=plan).take(42_000)
    pre, post = rows[:20_000], rows[22_000:]
    assert statistics.median(e["amount"] for e, _ in post) > 2 * statistics.median(e["amount"] for e, _ in pre)
    assert _total_variation(_share(pre, "country"), _share(post, "country")) > 0.1
    # Same labelling rule: the fraud rate within each group of categories stays where it was.
    everyday = tuple(set(CATEGORIES) - set(PATTERN_A_CATEGORIES) - set(PATTERN_B_CATEGORIES))
    before, after = _fraud_within(pre, PATTERN_A_CATEGORIES), _fraud_within(post, PATTERN_A_CATEGORIES)
    assert 0.08 < before < 0.2 and 0.08 < after < 0.2 and abs(after - before) < 0.05  # sessions: noisy
    for group in (PATTERN_B_CATEGORIES, everyday):
        assert _fraud_within(pre, group) < 0.01 and _fraud_within(post, group) < 0.01


def test_gradual_drift_mixes_old_and_new_fraud():
    plan = DriftPlan("gradual", 10_000, width=24_000)
    rows = FraudStream(seed=13, drift=plan).take(50_000)

    def fraud_in(segment, categories):
        return sum(o["is_fraud"] for e, o in segment if e["merchant_category"] in categories)

    early, late = rows[10_000:22_000], rows[22_000:34_000]
    for segment in (early, late):  # both patterns are fraud while mixing
        assert fraud_in(segment, PATTERN_A_CATEGORIES) > 20
        assert fraud_in(segment, PATTERN_B_CATEGORIES) > 20
    assert fraud_in(late, PATTERN_B_CATEGORIES) > fraud_in(early, PATTERN_B_CATEGORIES)
    assert fraud_in(late, PATTERN_A_CATEGORIES) < fraud_in(early, PATTERN_A_CATEGORIES)
    # Outside the transition the other pattern's categories see only the odd stealth fraud.
    assert fraud_in(rows[:9_500], PATTERN_B_CATEGORIES) < 0.05 * fraud_in(rows[:9_500], PATTERN_A_CATEGORIES)
    assert fraud_in(rows[36_000:], PATTERN_A_CATEGORIES) < 0.05 * fraud_in(rows[36_000:], PATTERN_B_CATEGORIES)
    assert [plan.phase(i) for i in (0, 9_999, 10_000, 33_999, 34_000, 49_999)] == [
        "pre",
        "pre",
        "mixing",
        "mixing",
        "post",
        "post",
    ]


def test_phases_of_every_drift_kind():
    assert {DriftPlan("none", 0).phase(i) for i in range(0, 100_000, 997)} == {"pre"}
    abrupt = DriftPlan("abrupt", 100)
    assert (abrupt.phase(99), abrupt.phase(100), abrupt.phase(10**6)) == ("pre", "post", "post")
    recurring = DriftPlan("recurring", 100, width=50)
    assert [recurring.phase(i) for i in (99, 100, 149, 150, 199, 200)] == ["pre", "post", "post", "pre", "pre", "post"]
    assert FraudStream(drift=recurring).phase(120) == "post"
    with pytest.raises(ValueError):
        DriftPlan("sideways", 0)


def test_recurring_concept_drift_comes_back():
    rows = FraudStream(seed=2, drift=DriftPlan("recurring", 8_000, width=10_000)).take(38_000)

    def electronics_fraud(segment) -> float:
        return _fraud_by_category(segment)["electronics"]

    assert electronics_fraud(rows[:8_000]) > 0.1 and electronics_fraud(rows[10_000:18_000]) < 0.03  # new concept
    assert electronics_fraud(rows[20_000:28_000]) > 0.1  # the old one is back
    assert electronics_fraud(rows[30_000:38_000]) < 0.03


class _RecordingProducer:
    def __init__(self):
        self.sent: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic, value, key):
        self.sent.append((topic, key, value))

    def poll(self, _timeout):
        return 0

    def flush(self, _timeout):
        return 0


def test_produce_keys_delays_outcomes_and_limits_the_rate(monkeypatch):
    recorder = _RecordingProducer()
    monkeypatch.setattr(generator.kafka, "producer", lambda *_a, **_kw: recorder)
    started = time.monotonic()
    stats = produce(FraudStream(seed=4), "unused:9092", "ev", "out", 400, rate=2000, label_delay_events=25)
    assert time.monotonic() - started >= 0.18  # 400 events at 2000/s
    assert stats["events"] == stats["outcomes"] == 400
    expected = FraudStream(seed=4).take(400)
    assert stats["frauds"] == sum(o["is_fraud"] for _, o in expected)
    events = [(k, json.loads(v)) for t, k, v in recorder.sent if t == "ev"]
    outcomes = [(k, json.loads(v)) for t, k, v in recorder.sent if t == "out"]
    assert [e for _, e in events] == [e for e, _ in expected]
    assert [o for _, o in outcomes] == [o for _, o in expected]
    assert all(k == e["user_id"].encode() for k, e in events)
    assert all(k == o["event_id"].encode() for k, o in outcomes)
    # The outcome of event k goes out after event k + 25 and before event k + 26 (all of them at the end).
    where = {(t, json.loads(v)["event_id"]): i for i, (t, _, v) in enumerate(recorder.sent)}
    for k, (event, _) in enumerate(expected):
        sent_at = where[("out", event["event_id"])]
        assert where[("ev", expected[min(k + 25, 399)][0]["event_id"])] < sent_at
        if k + 26 < 400:
            assert sent_at < where[("ev", expected[k + 26][0]["event_id"])]


@pytest.mark.integration
def test_produce_to_a_real_broker(kafka_bootstrap, unique):
    events_topic, outcomes_topic = f"events-{unique}", f"outcomes-{unique}"
    kafka.ensure_topics(kafka_bootstrap, [events_topic, outcomes_topic], partitions=2)
    stats = produce(
        FraudStream(seed=8, users=50), kafka_bootstrap, events_topic, outcomes_topic, 300, label_delay_events=10
    )
    assert stats["events"] == stats["outcomes"] == 300 and stats["events_per_s"] > 0
    expected = FraudStream(seed=8, users=50).take(300)
    got_events, got_outcomes = _read(kafka_bootstrap, events_topic, 300), _read(kafka_bootstrap, outcomes_topic, 300)
    assert sorted((k, generator.encode(v)) for k, v in got_events) == sorted(
        (e["user_id"].encode(), generator.encode(e)) for e, _ in expected
    )
    assert sorted((k, v["event_id"]) for k, v in got_outcomes) == sorted(
        (o["event_id"].encode(), o["event_id"]) for _, o in expected
    )


def _read(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, dict]]:
    consumer = kafka.consumer(bootstrap, f"read-{topic}", **{"enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    got: list[tuple[bytes, dict]] = []
    deadline = time.monotonic() + 30
    while len(got) < expected and time.monotonic() < deadline:
        got += [(m.key(), json.loads(m.value())) for m in consumer.consume(500, timeout=0.5) if m.error() is None]
    consumer.close()
    return got
