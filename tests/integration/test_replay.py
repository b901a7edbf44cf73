"""`driftloop replay` against a real broker: table rows become events the validator accepts, outcomes
follow their events by the label delay, what comes back is matched to this run's rows, and the metrics
agree with scikit-learn."""

import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from sklearn import metrics as sk

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.cli import main
from driftloop.load.replay import RunCollector, prequential_metrics, read_table, replay, table_rows
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec
from driftloop.streams import contracts
from driftloop.streams.worker.validation import Event, EventValidator
from tests.support import REPO, key_environ

ELEC2 = REPO.parent / "shared" / "data" / "elec2.csv"
ELEC2_SPEC = REPO / "driftloop" / "specs" / "elec2.yaml"
needs_elec2 = pytest.mark.skipif(
    not ELEC2.is_file(), reason=f"{ELEC2} (the shared elec2 dataset, ../shared) is not here"
)
ELEC2_FIELDS = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer")


def _environment(bootstrap: str, unique: str, tmp_path: Path, **topics: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DRIFTLOOP_DATA_DIR": str(tmp_path / "data"),
        "DRIFTLOOP_SPEC": str(ELEC2_SPEC),
        "DRIFTLOOP_PARTITIONS": "2",
        "DRIFTLOOP_TOPIC_EVENTS": topics.get("events", f"replay-events-{unique}"),
        "DRIFTLOOP_TOPIC_OUTCOMES": topics.get("outcomes", f"replay-outcomes-{unique}"),
        "DRIFTLOOP_TOPIC_PREDICTIONS": f"replay-predictions-{unique}",
        **key_environ(),
    }


def _read_all(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes, int]]:
    """Every record on `topic` as (partition, key, value, timestamp ms), in offset order per partition."""
    consumer = kafka.consumer(
        bootstrap,
        f"replay-test-{time.monotonic_ns()}",
        **{"enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 100},
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records, unfinished = [], set(partitions)
        deadline = time.monotonic() + 30
        while unfinished and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=0.2):
                if message.error() is None:
                    records.append((message.partition(), message.key(), message.value(), message.timestamp()[1]))
                elif message.error().code() == KafkaError._PARTITION_EOF:
                    unfinished.discard(message.partition())
        assert not unfinished, f"no end of partitions {unfinished} of {topic}"
        return records
    finally:
        consumer.close()


def _elec2_rows(count: int) -> list[dict[str, str]]:
    with ELEC2.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return [next(reader) for _ in range(count)]


@needs_elec2
@pytest.mark.integration
def test_cli_replays_elec2_rows_as_events_the_validator_accepts(kafka_bootstrap, unique, tmp_path, monkeypatch, capsys):
    environment = _environment(kafka_bootstrap, unique, tmp_path)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    started = time.time()
    assert main(["replay", str(ELEC2), "--limit", "300", "--entity-value", "nsw", "--timeout", "0.5", "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # exactly one JSON object
    assert "rows/s" not in err and "produced" not in err  # no progress bar with --json
    # No worker runs here: every row is produced and then reported as never answered.
    assert (report["rows"], report["produced_events"], report["produced_outcomes"]) == (300, 300, 300)
    assert (report["predicted"], report["dead_lettered"], report["missing"]) == (0, 0, 300)
    assert report["metrics"]["accuracy"] is None

    validator = EventValidator(load_spec(ELEC2_SPEC))
    records = _read_all(kafka_bootstrap, environment["DRIFTLOOP_TOPIC_EVENTS"])
    events = {}
    for _partition, key, value, _timestamp in records:
        event = validator.validate(value)
        assert isinstance(event, Event), event
        assert key == b"nsw" and event.entity == "nsw"
        assert "class" not in json.loads(value)  # the label never travels with the event
        events[event.event_id] = event
    assert len(records) == len(events) == 300
    times = []
    for index, row in enumerate(_elec2_rows(300)):
        event = events[f"{report['run_id']}-{index}"]
        assert event.values == {name: float(row[name]) for name in ELEC2_FIELDS}  # the CSV text, exactly
        times.append(event.event_time)
    assert set(np.diff(times)) == {1800.0}  # half-hour periods, in row order
    assert started - 1800 <= times[-1] <= started  # the last period just ended: nothing lies in the future


@needs_elec2
@pytest.mark.integration
def test_cli_prints_a_table_and_shows_progress_on_stderr(kafka_bootstrap, unique, tmp_path, monkeypatch, capsys):
    for name, value in _environment(kafka_bootstrap, unique, tmp_path).items():
        monkeypatch.setenv(name, value)
    assert main(["replay", str(ELEC2), "--limit", "20", "--timeout", "0.3"]) == 0
    out, err = capsys.readouterr()
    assert "20 rows" in out and "0 predictions" in out and "20 missing" in out
    assert "accuracy" in out and "roc auc" in out
    assert "produced" in err and "20/20" in err  # the progress bar


def _replay_onto_one_partition(kafka_bootstrap, unique, tmp_path, **options):
    """Replay with events and outcomes on one single-partition topic, so its order is the order produced."""
    stream = f"replay-stream-{unique}"
    environment = _environment(kafka_bootstrap, unique, tmp_path, events=stream, outcomes=stream)
    settings = settings_module.load(environ={**environment, "DRIFTLOOP_PARTITIONS": "1"})
    report = replay(settings, ELEC2, timeout=0.3, **options)
    records = [
        json.loads(value) | {"_key": key.decode(), "_ms": ms}
        for _p, key, value, ms in _read_all(kafka_bootstrap, stream)
    ]
    return report, records


@needs_elec2
@pytest.mark.integration
def test_outcomes_follow_their_event_by_the_label_delay_in_events(kafka_bootstrap, unique, tmp_path):
    rows, delay = 12, 3
    report, records = _replay_onto_one_partition(kafka_bootstrap, unique, tmp_path, limit=rows, label_delay=delay)
    assert report.produced_outcomes == rows

    expected = []
    for index in range(rows):
        expected.append(("event", index))
        if index >= delay:
            expected.append(("outcome", index - delay))
    expected += [("outcome", index) for index in range(rows - delay, rows)]
    kinds = [("event" if "market" in r else "outcome", int(r["event_id"].rsplit("-", 1)[1])) for r in records]
    assert kinds == expected

    events = {r["event_id"]: r for r in records if "market" in r}
    labels = [int(row["class"]) for row in _elec2_rows(rows)]
    for record in records:
        if "market" in record:
            continue
        index = int(record["event_id"].rsplit("-", 1)[1])
        assert record["_key"] == record["event_id"]  # outcomes are keyed by the event they label
        assert record["class"] == labels[index]
        # Timed by the replayed clock: the event time of the latest event produced before it.
        latest = min(index + delay, rows - 1)
        assert record["outcome_time"] == events[f"{report.run_id}-{latest}"]["event_time"]


@needs_elec2
@pytest.mark.integration
def test_outcomes_follow_their_event_by_the_label_delay_in_seconds(kafka_bootstrap, unique, tmp_path):
    report, records = _replay_onto_one_partition(
        kafka_bootstrap, unique, tmp_path, limit=10, rate=50.0, label_delay_seconds=0.5
    )
    events = {r["event_id"]: r for r in records if "market" in r}
    outcomes = {r["event_id"]: r for r in records if "market" not in r}
    assert len(events) == len(outcomes) == report.produced_outcomes == 10
    for event_id, outcome in outcomes.items():
        waited_ms = outcome["_ms"] - events[event_id]["_ms"]
        assert 500 <= waited_ms < 1500
    assert report.rows_per_s < 80  # the events kept the rate; waiting out the delay is not counted in it


def _prediction(event_id: str, version: int) -> bytes:
    return contracts.prediction(
        event_id=event_id,
        entity="nsw",
        event_time=1.7e9,
        score=0.7,
        threshold=0.5,
        model_name="elec2",
        model_version=version,
        variant="champion",
        feature_view="elec2_features",
        feature_view_version="1",
        latency_ms=2.0,
    )


def _dead_letter(event_id: str, reason: str) -> bytes:
    original = json.dumps({"event_id": event_id, "market": "nsw"}).encode()
    return contracts.dead_letter(original, contracts.Source("events", 0, 7), reason, "detail", "nswprice")


@pytest.mark.integration
def test_collector_keeps_only_this_runs_answers_from_after_it_started(kafka_bootstrap, unique):
    predictions, dlq = f"replay-predictions-{unique}", f"replay-events-{unique}.dlq"
    kafka.ensure_topics(kafka_bootstrap, [predictions, dlq], partitions=2)
    producer = kafka.producer(kafka_bootstrap)
    producer.produce(predictions, key=b"nsw", value=_prediction("run1-0", version=1))  # older than the run
    assert producer.flush(10) == 0

    row_of = {f"run1-{index}": index for index in range(5)}
    with RunCollector(kafka_bootstrap, predictions, dlq, "event_id", row_of) as collector:
        for topic, value in [
            (predictions, _prediction("run1-0", version=2)),
            (predictions, _prediction("run1-1", version=2)),
            (predictions, _prediction("run1-1", version=3)),  # emitted again after a crash
            (predictions, _prediction("other-2", version=2)),  # another run's
            (dlq, _dead_letter("run1-2", "out_of_range")),
            (dlq, _dead_letter("run1-0", "duplicate_event_id")),
        ]:  # row 0 was scored
            producer.produce(topic, key=b"nsw", value=value)
        assert producer.flush(10) == 0
        deadline = time.monotonic() + 15
        while collector.accounted < 3 and time.monotonic() < deadline:
            collector.poll(0.2)
        collector.poll(0.5)  # and nothing else turns up

    assert {row: p["model_version"] for row, p in collector.predictions.items()} == {0: 2, 1: 2}
    assert collector.duplicate_predictions == 1
    assert collector.dead_letter_reasons() == {"out_of_range": 1}
    assert collector.missing == 2  # rows 3 and 4


def test_metrics_agree_with_scikit_learn_on_the_predicted_rows():
    rng = np.random.default_rng(3)
    count, threshold = 57, 0.4
    labels = rng.integers(0, 2, count)
    # One decimal: many tied scores (ROC AUC averages their ranks); 0 and 1 exactly (log-loss clips them).
    scores = np.round(labels * 0.35 + rng.random(count) * 0.65, 1)
    scores[:2] = 0.0, 1.0
    predictions = [
        json.loads(
            contracts.prediction(
                event_id=f"r-{i}",
                entity="nsw",
                event_time=1.7e9 + i,
                score=score,
                threshold=threshold,
                model_name="elec2",
                model_version=1 if i < 30 else 2,
                variant="champion",
                feature_view="fv",
                feature_view_version="1",
                latency_ms=1.0,
            )
        )
        for i, score in enumerate(scores)
    ]
    for unanswered in (4, 20, 21, 50):
        predictions[unanswered] = None

    got = prequential_metrics(labels.tolist(), predictions)

    kept = [i for i, p in enumerate(predictions) if p is not None]
    y = labels[kept]
    score = np.array([predictions[i]["score"] for i in kept])
    decision = (score >= threshold).astype(int)
    assert sk.accuracy_score(y, decision) != sk.accuracy_score(y, score >= 0.5)  # the records' decisions count
    assert got["rows"] == count and got["predicted"] == len(kept)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, decision))
    assert got["precision"] == pytest.approx(sk.precision_score(y, decision))
    assert got["recall"] == pytest.approx(sk.recall_score(y, decision))
    assert got["f1"] == pytest.approx(sk.f1_score(y, decision))
    assert got["log_loss"] == pytest.approx(sk.log_loss(y, score))
    assert got["roc_auc"] == pytest.approx(sk.roc_auc_score(y, score))

    # Tenths of the stream in row order (57 rows: seven of 6 rows, then three of 5).
    bounds = np.cumsum([0] + [6] * 7 + [5] * 3)
    expected = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        part = [i for i in kept if start <= i < end]
        hits = [int(predictions[i]["decision"] == labels[i]) for i in part]
        expected.append(
            {"rows": [int(start), int(end)], "predicted": len(part), "accuracy": pytest.approx(np.mean(hits))}
        )
    assert got["deciles"] == expected

    majority_hits = previous_hits = 0
    for i in kept:
        ones, zeros = int(labels[:i].sum()), i - int(labels[:i].sum())
        majority_hits += int((1 if ones > zeros else 0) == labels[i])
        previous_hits += int((labels[i - 1] if i else 0) == labels[i])
    assert got["baselines"] == {
        "majority_class": pytest.approx(majority_hits / len(kept)),
        "previous_label": pytest.approx(previous_hits / len(kept)),
    }
    assert got["model_versions"] == [
        {"model_name": "elec2", "model_version": 1, "variant": "champion", "predictions": 27},
        {"model_name": "elec2", "model_version": 2, "variant": "champion", "predictions": 26},
    ]


def test_metrics_without_both_classes_leave_roc_auc_out():
    prediction = json.loads(_prediction("r-0", version=1))
    got = prequential_metrics([1, 1], [prediction, prediction])
    assert got["accuracy"] == 1.0 and got["roc_auc"] is None


def _write_elec2_slice(path: Path, drop: tuple[str, ...] = (), label: dict[int, str] | None = None) -> Path:
    """The first five elec2 rows without the `drop` columns, with `label` replacing some rows' class."""
    source, label = _elec2_rows(5), label or {}
    columns = [c for c in source[0] if c not in drop]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        for index, row in enumerate(source):
            writer.writerow({**row, "class": label.get(index, row["class"])})
    return path


@pytest.mark.parametrize(
    "drop, label, message",
    [
        (("class",), {}, "no label column 'class' (the spec's outcomes.label); columns: period, nswprice"),
        (("nswprice", "vicdemand"), {}, "missing columns for required fields of spec 'elec2': nswprice, vicdemand"),
        ((), {3: "2"}, "row 3, column 'class': '2' is not a 0/1 label"),
        ((), {1: ""}, "row 1, column 'class': the label is empty"),
    ],
)
@needs_elec2
def test_a_table_that_cannot_be_replayed_is_one_error_line(tmp_path, capsys, drop, label, message):
    table = _write_elec2_slice(tmp_path / "slice.csv", drop=drop, label=label)
    assert main(["replay", str(table), "--spec", str(ELEC2_SPEC)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"driftloop: error: {table}: {message}")
    assert err.count("\n") == 1


@needs_elec2
def test_without_a_broker_replay_says_to_start_the_stack(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("DRIFTLOOP_DATA_DIR", str(tmp_path))
    table = _write_elec2_slice(tmp_path / "slice.csv")
    assert main(["replay", str(table), "--spec", str(ELEC2_SPEC)]) == 2
    assert "no running stack: start `driftloop up`" in capsys.readouterr().err

    (tmp_path / "stack.json").write_text(json.dumps({"bootstrap": "127.0.0.1:1"}))  # a stack that is gone
    assert main(["replay", str(table), "--spec", str(ELEC2_SPEC)]) == 2
    assert "no Kafka broker answers at 127.0.0.1:1" in capsys.readouterr().err


def test_parquet_columns_are_typed_by_the_spec(tmp_path):
    """Typed Parquet columns (ints, datetimes, nullable ints, bools) become the demo spec's event fields."""
    table = tmp_path / "fraud.parquet"
    pd.DataFrame(
        {
            "event_id": [101, 102],
            "user_id": ["u-1", "u-2"],
            "event_time": pd.to_datetime(["2026-11-01T10:00:00", "2026-11-01T10:00:30"]),  # naive: UTC
            "amount": [12, 30.5],
            "merchant_category": ["grocery", "casino"],
            "country": ["NL", "DE"],
            "channel": ["pos", "web"],
            "card_present": [True, False],
            "account_age_days": pd.array([400, None], dtype="Int64"),
            "is_fraud": [False, True],
            "note": ["ignored", "too"],
        }
    ).to_parquet(table)
    spec = load_spec(DEMO_SPEC)
    rows = table_rows(spec, read_table(table), origin=str(table), run_id="0badcafe")

    validator = EventValidator(spec, clock=lambda: 1.9e9)
    events = [validator.validate(json.dumps(row.event).encode()) for row in rows]
    assert all(isinstance(event, Event) for event in events), events
    assert [(e.event_id, e.entity, e.event_time) for e in events] == [
        ("101", "u-1", 1793527200.0),
        ("102", "u-2", 1793527230.0),
    ]
    assert events[0].values == {
        "amount": 12.0,
        "merchant_category": "grocery",
        "country": "NL",
        "channel": "pos",
        "card_present": True,
        "account_age_days": 400,
    }
    assert events[1].unseen == ("merchant_category",) and events[1].missing == ("account_age_days",)
    assert [row.label for row in rows] == [0, 1] and [row.key for row in rows] == ["u-1", "u-2"]
