"""The JSON records consumers read: parseable with plain json, original bytes recoverable exactly."""

import json

from driftloop.streams.contracts import Source, dead_letter, original_bytes, prediction


def test_dead_letter_keeps_the_exact_original_bytes_and_the_reason():
    for original in (b'{"amount": "lots"}', b"\xff\xfe\x00binary", b"", None):
        envelope = json.loads(dead_letter(original, Source("events", 2, 41, 1700000000000, b"u-1"),
                                          "wrong_type", "amount must be a number", "amount"))
        assert original_bytes(envelope) == (original or b"")
        assert envelope["reason"] == "wrong_type" and envelope["field"] == "amount"
        assert envelope["source"] == {"topic": "events", "partition": 2, "offset": 41,
                                      "timestamp_ms": 1700000000000, "key": "u-1"}
    assert json.loads(dead_letter(b"\xff", Source("events", 0, 0), "invalid_json", "x"))["original_utf8"] is None


def test_prediction_record():
    record = json.loads(prediction(event_id="e-1", entity="u-1", event_time=1700000000.25, score=0.8312345678,
                                   threshold=0.5, model_name="card_fraud", model_version=3, variant="canary",
                                   feature_view="card_fraud_features", feature_view_version="v1", latency_ms=4.56789))
    assert record == {"contract": 1, "event_id": "e-1", "entity": "u-1", "event_time": "2023-11-14T22:13:20.250Z",
                      "score": 0.831235, "decision": 1, "threshold": 0.5, "model_name": "card_fraud",
                      "model_version": 3, "variant": "canary", "feature_view": "card_fraud_features",
                      "feature_view_version": "v1", "latency_ms": 4.568}
