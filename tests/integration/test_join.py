"""The outcome join's rules: either side first, duplicates, expiry, and outcome validation."""

from __future__ import annotations

import json

import msgspec
import pytest

from driftloop import kafka
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec
from driftloop.streams.state.store import StateMemory
from driftloop.streams.worker.join import JoinResult, Outcome, OutcomeJoiner, join_partition, join_table, parse_outcome
from driftloop.streams.worker.validation import Rejection
from tests.support.clock import Clock

SPEC = load_spec(DEMO_SPEC)


@pytest.fixture
def joiner(kafka_bootstrap, unique, tmp_path):
    table = join_table(f"join-{unique}", 2, directory=tmp_path, memory=StateMemory(16))
    table.ensure_changelog(kafka_bootstrap)
    table.restore(kafka_bootstrap, [0, 1])
    yield OutcomeJoiner(SPEC, table, clock=Clock(1_700_000_000.0))
    table.close()


def pending(event_id: str, score: float = 0.9) -> bytes:
    return msgspec.json.encode(
        {
            "event_id": event_id,
            "entity": "u-1",
            "event_time": 1_700_000_000.0,
            "score": score,
            "model_version": 3,
            "variant": "champion",
            "predicted_at": 1_700_000_000.5,
            "row": {"amount": 12.5},
        }
    )


def test_prediction_then_outcome_joins_once(joiner):
    result = JoinResult()
    joiner.add_pending(0, "e-1", pending("e-1"), result)
    assert result.labeled == []
    joiner.add_outcome(0, Outcome("e-1", 1, 1_700_000_100.0), result)
    ((key, value),) = result.labeled
    record = json.loads(value)
    assert key == b"u-1"
    assert record["label"] == 1 and record["decision"] == 1 and record["features"] == {"amount": 12.5}
    assert record["model_version"] == 3 and record["event_time"] == "2023-11-14T22:13:20.000Z"
    assert result.counts == {"joined": 1}
    assert joiner.waiting() == {}


def test_outcome_before_prediction_waits_for_it(joiner):
    result = JoinResult()
    joiner.add_outcome(1, Outcome("e-2", 0, 1_700_000_100.0), result)
    joiner.add_outcome(1, Outcome("e-2", 0, 1_700_000_100.0), result)
    assert joiner.waiting() == {"outcome": 1} and result.counts == {"duplicate": 1}
    joiner.add_pending(1, "e-2", pending("e-2", score=0.2), result)
    assert json.loads(result.labeled[0][1])["label"] == 0
    assert result.counts["joined"] == 1


def test_unmatched_sides_expire_after_the_ttl(joiner):
    result = JoinResult()
    joiner.add_pending(0, "lonely-prediction", pending("lonely-prediction"), result)
    joiner.add_outcome(1, Outcome("lonely-outcome", 1, 0.0), result)
    joiner.clock.now += SPEC.outcomes.join_ttl - 1
    joiner.expire([0, 1], result)
    assert joiner.waiting() == {"prediction": 1, "outcome": 1}
    joiner.clock.now += 2
    joiner.expire([0, 1], result)
    assert joiner.waiting() == {}
    assert result.counts == {"prediction_expired": 1, "expired_unmatched": 1}


def test_join_partition_is_stable_and_spread():
    assert join_partition("e-1", 4) == join_partition("e-1", 4)
    assert {join_partition(f"e-{i}", 4) for i in range(100)} == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "raw, reason, field",
    [
        (b"not json", "invalid_json", None),
        (b"[1]", "not_an_object", None),
        (b'{"is_fraud": 1}', "missing_field", "event_id"),
        (b'{"event_id": "", "is_fraud": 1}', "missing_field", "event_id"),
        (b'{"event_id": "e", "is_fraud": null}', "missing_field", "is_fraud"),
        (b'{"event_id": "e", "is_fraud": 2}', "wrong_type", "is_fraud"),
        (b'{"event_id": "e", "is_fraud": "1"}', "wrong_type", "is_fraud"),
        (b'{"event_id": "e", "is_fraud": 1, "outcome_time": "yesterday"}', "bad_timestamp", "outcome_time"),
        (b'{"event_id": "e", "is_fraud": 1, "outcome_time": [1]}', "bad_timestamp", "outcome_time"),
        (None, "invalid_json", None),
    ],
)
def test_bad_outcomes_are_rejected_with_a_reason(raw, reason, field):
    result = parse_outcome(raw, SPEC, now=5.0)
    assert isinstance(result, Rejection) and (result.reason, result.field) == (reason, field)


def test_outcome_forms():
    assert parse_outcome(b'{"event_id": 7, "is_fraud": true}', SPEC, now=5.0) == Outcome("7", 1, 5.0)
    assert (
        parse_outcome(
            b'{"event_id": "e", "is_fraud": 0, "outcome_time": "2026-11-23T12:00:00Z"}', SPEC, now=5.0
        ).outcome_time
        == 1795435200.0
    )


def test_a_batch_of_predictions_joins_outcomes_waiting_on_disk_or_in_memory_and_a_repeat_once(joiner, kafka_bootstrap):
    result = JoinResult()
    joiner.add_outcome(0, Outcome("on-disk", 1, 1_700_000_100.0), result)
    producer = kafka.producer(kafka_bootstrap)
    joiner.table.flush_to(producer)
    assert producer.flush(15) == 0
    joiner.table.wait_written()  # the outcome is in RocksDB now, no longer in memory
    joiner.add_outcome(0, Outcome("in-memory", 0, 1_700_000_100.0), result)
    batch = [(event_id, pending(event_id)) for event_id in ("on-disk", "in-memory", "new", "new")]
    joiner.add_pendings(0, batch, result)
    assert sorted(json.loads(value)["event_id"] for _, value in result.labeled) == ["in-memory", "on-disk"]
    assert result.counts == {"joined": 2}
    assert joiner.waiting() == {"prediction": 1}  # "new" once: the repeat found the first waiting
