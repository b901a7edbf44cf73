"""The JSON records consumers read: parseable with plain json, original bytes recoverable exactly."""

import hashlib
import json
import math
import random
from datetime import UTC, datetime

import pytest

from driftloop.streams.contracts import (
    DLQ_PREFIX_BYTES,
    Source,
    dead_letter,
    dead_letter_key,
    iso_time,
    original_bytes,
    prediction,
)


def test_dead_letter_keeps_the_exact_original_bytes_and_the_reason():
    for original in (b'{"amount": "lots"}', b"\xff\xfe\x00binary", b"", None):
        envelope = json.loads(
            dead_letter(
                original,
                Source("events", 2, 41, 1700000000000, b"u-1"),
                "wrong_type",
                "amount must be a number",
                "amount",
            )
        )
        assert original_bytes(envelope) == (original or b"")
        assert envelope["reason"] == "wrong_type" and envelope["field"] == "amount"
        assert envelope["source"] == {
            "topic": "events",
            "partition": 2,
            "offset": 41,
            "timestamp_ms": 1700000000000,
            "key": "u-1",
        }
    assert json.loads(dead_letter(b"\xff", Source("events", 0, 0), "invalid_json", "x"))["original_utf8"] is None


def test_a_dead_letter_stays_below_the_producers_limit_whatever_the_input():
    """The producer refuses records over 1,000,000 bytes, so an envelope must never reach that."""
    cases = {
        "5 MB of text": b"A" * 5_000_000,
        "256 KiB of NUL bytes (JSON escapes each as \\u0000)": b"\x00" * (256 * 1024),
        "a 4 MB binary blob": random.Random(1).randbytes(4_000_000),
        "a multi-byte character cut by the prefix": "\u20ac".encode() * 300_000,
    }
    key = b"k" * 2_000_000
    for what, original in cases.items():
        raw = dead_letter(original, Source("events", 0, 7, None, key), "too_large", "x" * 10_000)
        envelope = json.loads(raw)
        assert len(raw) < 1_000_000, what
        assert envelope["original_size"] == len(original), what
        assert envelope["original_sha256"] == hashlib.sha256(original).hexdigest(), what
        truncated = envelope["original_truncated"]
        kept = __import__("base64").b64decode(envelope["original_b64"])
        assert kept == (original[:DLQ_PREFIX_BYTES] if truncated else original), what
        if truncated:
            with pytest.raises(ValueError, match="keeps only"):
                original_bytes(envelope)
        else:
            assert original_bytes(envelope) == original
        assert envelope["source"]["key"] == "sha256:" + hashlib.sha256(key).hexdigest()
    assert dead_letter_key(key) == b"sha256:" + hashlib.sha256(key).hexdigest().encode()
    assert dead_letter_key(b"u-1") == b"u-1" and dead_letter_key(None) is None
    prefix = json.loads(dead_letter("\u20ac".encode() * 300_000, Source("events", 0, 0), "too_large", ""))
    assert prefix["original_utf8"] == "\u20ac" * (DLQ_PREFIX_BYTES // 3)  # the cut character is left out


def test_prediction_record():
    record = json.loads(
        prediction(
            event_id="e-1",
            entity="u-1",
            event_time=1700000000.25,
            score=0.8312345678,
            threshold=0.5,
            model_name="card_fraud",
            model_version=3,
            variant="canary",
            feature_view="card_fraud_features",
            feature_view_version="v1",
            latency_ms=4.56789,
        )
    )
    assert record == {
        "contract": 1,
        "event_id": "e-1",
        "entity": "u-1",
        "event_time": "2023-11-14T22:13:20.250Z",
        "score": 0.831235,
        "decision": 1,
        "threshold": 0.5,
        "model_name": "card_fraud",
        "model_version": 3,
        "variant": "canary",
        "feature_view": "card_fraud_features",
        "feature_view_version": "v1",
        "latency_ms": 4.568,
    }


def test_iso_time_prints_what_datetime_prints():
    """The fast formatter must agree with datetime's rounding to microseconds and truncation to milliseconds."""
    rng = random.Random(7)
    times = [rng.uniform(0, 253402300799) for _ in range(20_000)] + [rng.uniform(1.6e9, 1.8e9) for _ in range(20_000)]
    # fractions at the rounding edges: half a microsecond, the last microsecond before a carry
    times += [math.floor(t) + edge / 1e6 for t in times[:500] for edge in (0.5, 1.5, 2.5, 999_999.4999, 999_999.5)]
    times += [0.0, 1e-7, 0.9999995, 253402300799.0, -1.5, -86400.25]
    for t in times:
        assert iso_time(t) == datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        ), t
