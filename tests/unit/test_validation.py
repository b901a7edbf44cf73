"""Event validation against the demo spec: what a producer's record becomes (Event or DLQ Rejection)."""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from collections import Counter

import pytest
import yaml

from driftloop.settings import DEMO_SPEC
from driftloop.spec import parse_spec
from driftloop.streams.worker.validation import (
    REASONS,
    UNSEEN,
    Event,
    EventValidator,
    RecentIds,
    Rejection,
    reject_duplicate,
)
from tests.support.hostile import CATEGORIES, NOW, SPEC, encode, hostile_record

VALUE_FIELDS = {"amount", "merchant_category", "country", "channel", "card_present", "account_age_days"}

# The README's kcat example.
README_EVENT = (
    b'{"event_id":"e-1","user_id":"u-42","event_time":"2026-11-23T12:00:00Z","amount":31.5,'
    b'"merchant_category":"grocery","country":"NL","channel":"pos","card_present":true,'
    b'"account_age_days":400}'
)


@pytest.fixture
def validator() -> EventValidator:
    return EventValidator(SPEC, clock=lambda: NOW)


def event(**changes) -> dict:
    doc = json.loads(README_EVENT)
    for key, value in changes.items():
        if value is ...:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


def test_readme_event_becomes_a_typed_event(validator):
    result = validator.validate(README_EVENT)
    assert result == Event(
        event_id="e-1",
        entity="u-42",
        event_time=NOW,
        values={
            "amount": 31.5,
            "merchant_category": "grocery",
            "country": "NL",
            "channel": "pos",
            "card_present": True,
            "account_age_days": 400,
        },
        unseen=(),
        missing=(),
        raw=README_EVENT,
    )
    assert [type(result.values[k]) for k in ("amount", "card_present", "account_age_days")] == [float, bool, int]
    assert type(result.event_time) is float


def test_lenient_where_the_spec_allows(validator):
    raw = encode(
        event(
            event_id=7,
            user_id=42,
            event_time=NOW - 60,
            amount=31,
            account_age_days=400.0,
            future_field={"nested": [1, 2]},
        )
    )
    result = validator.validate(raw)
    assert isinstance(result, Event), result
    assert (result.event_id, result.entity, result.event_time) == ("7", "42", NOW - 60)
    assert type(result.values["amount"]) is float and result.values["amount"] == 31.0
    assert type(result.values["account_age_days"]) is int and result.values["account_age_days"] == 400
    assert "future_field" not in result.values  # unknown fields are ignored (forward compatibility)


@pytest.mark.parametrize(
    "stamp, expected",
    [
        ("2026-11-23T12:00:00Z", NOW),
        ("2026-11-23T13:30:00+01:30", NOW),
        ("2026-11-23T12:00:00", NOW),  # naive means UTC
        ("2026-11-23T11:59:59.5Z", NOW - 0.5),
        (NOW, NOW),
        (int(NOW) - 1, NOW - 1),
        (0, 0.0),
    ],
)
def test_timestamps(validator, stamp, expected):
    result = validator.validate(encode(event(event_time=stamp)))
    assert isinstance(result, Event), result
    assert result.event_time == expected


@pytest.mark.parametrize("absent", [..., None])
def test_optional_field_absent_or_null(validator, absent):
    result = validator.validate(encode(event(account_age_days=absent)))
    assert isinstance(result, Event), result
    assert result.values["account_age_days"] is None
    assert result.missing == ("account_age_days",)


def test_unseen_categories_are_mapped_and_counted(validator):
    raws = [
        encode(event(event_id=f"e-{i}", merchant_category=cat, country=country))
        for i, (cat, country) in enumerate(
            [("crypto", "NL"), ("grocery", "XX"), ("crypto", "ZZ"), ("grocery", "NL"), (UNSEEN, "NL")]
        )
    ]
    results = validator.validate_batch(raws)
    assert all(isinstance(r, Event) for r in results), results
    assert results[0].values["merchant_category"] == UNSEEN
    assert [r.unseen for r in results] == [
        ("merchant_category",),
        ("country",),
        ("merchant_category", "country"),
        (),
        ("merchant_category",),
    ]
    counts = Counter(name for r in results for name in r.unseen)
    assert counts == {"merchant_category": 3, "country": 2}


def _variant(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert old in raw
    return raw.replace(old, new)


# (input, reason, field): one or more representative inputs per reason code.
BAD = [
    (b"{not json", "invalid_json", None),
    (b"", "invalid_json", None),
    (README_EVENT[:-1], "invalid_json", None),
    (b"\xff\xfe{}", "invalid_json", None),
    (_variant(README_EVENT, b'"u-42"', b'"u-\xff"'), "invalid_json", None),  # not UTF-8 inside a string
    (_variant(README_EVENT, b'"u-42"', b'"u-\\ud800"'), "invalid_json", None),  # lone surrogate
    (b"[" * 60_000, "invalid_json", None),  # under max_bytes but nested too deep to parse
    (_variant(README_EVENT, b"}", b',"extra":NaN}'), "invalid_json", None),  # not JSON, and not in a spec field
    (b"[1, 2]", "not_an_object", None),
    (b'"e-1"', "not_an_object", None),
    (b"null", "not_an_object", None),
    (encode(event(padding="x" * 70_000)), "too_large", None),
    (b"[" * 100_000, "too_large", None),
    (encode(event(user_id=...)), "missing_field", "user_id"),
    (encode(event(amount=None)), "missing_field", "amount"),
    (encode(event(event_id="")), "missing_field", "event_id"),
    (encode(event(amount="31.5")), "wrong_type", "amount"),
    (encode(event(amount=True)), "wrong_type", "amount"),
    (encode(event(card_present=1)), "wrong_type", "card_present"),
    (encode(event(card_present="true")), "wrong_type", "card_present"),
    (encode(event(account_age_days=1.5)), "wrong_type", "account_age_days"),
    (encode(event(account_age_days=False)), "wrong_type", "account_age_days"),
    (encode(event(channel=3)), "wrong_type", "channel"),
    (encode(event(event_id=1.0)), "wrong_type", "event_id"),
    (encode(event(user_id=["u-42"])), "wrong_type", "user_id"),
    (_variant(README_EVENT, b"31.5", b"NaN"), "not_finite", "amount"),
    (_variant(README_EVENT, b"31.5", b"Infinity"), "not_finite", "amount"),
    (_variant(README_EVENT, b"31.5", b"-Infinity"), "not_finite", "amount"),
    (_variant(README_EVENT, b"31.5", b"1e999"), "not_finite", "amount"),  # overflows a double
    (_variant(README_EVENT, b":400", b":NaN"), "not_finite", "account_age_days"),
    (encode(event(amount=-0.01)), "out_of_range", "amount"),
    (encode(event(amount=1_000_000.5)), "out_of_range", "amount"),
    (encode(event(amount=10**400)), "out_of_range", "amount"),
    (encode(event(account_age_days=36_501)), "out_of_range", "account_age_days"),
    (encode(event(event_id="e" * 65)), "too_long", "event_id"),
    (encode(event(user_id=10**70)), "too_long", "user_id"),
    (encode(event(event_time="yesterday")), "bad_timestamp", "event_time"),
    (encode(event(event_time="2026-13-01T00:00:00Z")), "bad_timestamp", "event_time"),
    (encode(event(event_time="1969-12-31T23:59:59Z")), "bad_timestamp", "event_time"),
    (encode(event(event_time="1970-01-01T00:30:00+01:00")), "bad_timestamp", "event_time"),  # 1969 in UTC
    (encode(event(event_time=-1)), "bad_timestamp", "event_time"),
    (encode(event(event_time=NOW * 1000)), "bad_timestamp", "event_time"),  # epoch milliseconds
    (encode(event(event_time=True)), "bad_timestamp", "event_time"),
    (encode(event(event_time=[2026, 11, 23])), "bad_timestamp", "event_time"),
    (encode(event(event_time=NOW + 3601)), "event_time_in_future", "event_time"),
    (encode(event(event_time="2027-01-01T00:00:00Z")), "event_time_in_future", "event_time"),
]


@pytest.mark.parametrize("raw, reason, field", BAD, ids=[f"{i}-{r}" for i, (_, r, _) in enumerate(BAD)])
def test_bad_input_is_rejected_with_its_reason(validator, raw, reason, field):
    result = validator.validate(raw)
    assert isinstance(result, Rejection), result
    assert (result.reason, result.field) == (reason, field), result.detail
    assert result.raw == raw
    assert result.detail and len(result.detail) <= 200


def test_every_reason_is_documented_and_exercised():
    exercised = {reason for _, reason, _ in BAD} | {"duplicate_event_id"}  # the last one: see test_duplicates
    assert exercised == set(REASONS)
    assert all(isinstance(text, str) and text for text in REASONS.values())


def test_tombstone_is_rejected_with_empty_raw(validator):
    assert validator.validate(None) == Rejection("invalid_json", None, "no value (a tombstone)", b"")


def test_future_skew_boundary_and_setting():
    ok = encode(event(event_time=NOW + 3599))
    assert isinstance(EventValidator(SPEC, clock=lambda: NOW).validate(ok), Event)
    strict = EventValidator(SPEC, clock=lambda: NOW, max_future_skew=60)
    assert strict.validate(ok).reason == "event_time_in_future"


def test_max_bytes_setting():
    small = EventValidator(SPEC, clock=lambda: NOW, max_bytes=len(README_EVENT) - 1)
    assert small.validate(README_EVENT).reason == "too_large"
    roomy = EventValidator(SPEC, clock=lambda: NOW, max_bytes=4_000_000)
    assert roomy.validate(b"[" * 1_000_000).reason == "invalid_json"  # deep nesting is caught, not raised


def test_batch_matches_single_and_reads_the_clock_once():
    reads = []

    def clock():
        reads.append(1)
        return NOW

    validator = EventValidator(SPEC, clock=clock)
    raws = [README_EVENT] + [raw for raw, _, _ in BAD]
    batch = validator.validate_batch(raws)
    assert len(reads) == 1
    assert batch == [validator.validate(raw) for raw in raws]


def test_duplicates(validator):
    recent = RecentIds()
    first, again = validator.validate(README_EVENT), validator.validate(README_EVENT)
    assert recent.seen_before(first.event_id) is False
    assert recent.seen_before(again.event_id) is True
    rejection = reject_duplicate(again)
    assert rejection.reason == "duplicate_event_id" and rejection.raw == README_EVENT
    assert "e-1" in rejection.detail


def test_recent_ids_evicts_oldest_first():
    recent = RecentIds(capacity=3)
    assert [recent.seen_before(i) for i in "abc"] == [False] * 3
    assert recent.seen_before("a") is True  # a repeat does not refresh "a"...
    assert recent.seen_before("d") is False  # ...so "a" is the one evicted here
    assert [i in recent for i in "abcd"] == [False, True, True, True] and len(recent) == 3
    assert recent.seen_before("a") is False  # forgotten, so recorded anew (evicts "b")
    assert [i in recent for i in "abcd"] == [True, False, True, True]
    with pytest.raises(ValueError):
        RecentIds(capacity=0)


def test_recent_ids_memory_stays_bounded():
    """The filter's memory is what keeps a worker holding millions of events within its budget."""
    recent = RecentIds(capacity=200_000)
    tracemalloc.start()
    try:
        for i in range(400_000):
            recent.seen_before(f"bench-state-{i:012d}-abcdef")
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(recent) == 200_000 and "bench-state-000000399999-abcdef" in recent
    assert "bench-state-000000000000-abcdef" not in recent
    assert held < 20 * 1024 * 1024, f"{held / 2**20:.1f} MB for 200,000 ids"


def test_an_int_field_without_bounds_still_fits_64_bits():
    """Feast and the offline parquet store ints as int64: a larger one goes to the DLQ, not into a write."""
    doc = yaml.safe_load(DEMO_SPEC.read_text())
    del doc["events"]["fields"]["account_age_days"]["min"], doc["events"]["fields"]["account_age_days"]["max"]
    unbounded = EventValidator(parse_spec(doc))
    for fits in (2**63 - 1, -(2**63), 0):
        assert unbounded.validate(encode(event(account_age_days=fits))).values["account_age_days"] == fits
    for too_big in (2**63, -(2**63) - 1, 10**30):
        rejection = unbounded.validate(encode(event(account_age_days=too_big)))
        assert (rejection.reason, rejection.field) == ("out_of_range", "account_age_days")


# --- fuzz -----------------------------------------------------------------------------------------

FUZZ_SEED = 20261123
FUZZ_INPUTS = 6000


def _assert_well_formed_event(result: Event, raw: bytes) -> None:
    assert result.raw is raw
    assert type(result.event_id) is str and 0 < len(result.event_id) <= 64
    assert type(result.entity) is str and 0 < len(result.entity) <= 64
    assert type(result.event_time) is float and 0 <= result.event_time <= NOW + 3600
    values = result.values
    assert set(values) == VALUE_FIELDS
    assert type(values["amount"]) is float and 0 <= values["amount"] <= 1_000_000
    assert type(values["card_present"]) is bool
    age = values["account_age_days"]
    assert (age is None) == ("account_age_days" in result.missing)
    assert age is None or (type(age) is int and 0 <= age <= 36500)
    for name, known in CATEGORIES.items():
        assert values[name] in known or values[name] == UNSEEN
        assert (values[name] == UNSEEN) == (name in result.unseen)


def test_fuzz_every_input_yields_exactly_one_result(validator):
    rng = random.Random(FUZZ_SEED)
    inputs: list[bytes | None] = []
    for i in range(FUZZ_INPUTS):
        inputs.append(hostile_record(rng, i, [r for r in inputs[-50:] if r is not None]))

    results = validator.validate_batch(inputs)  # no exception may escape
    assert len(results) == len(inputs)
    assert results == [validator.validate(raw) for raw in inputs]  # and the single path agrees

    recent, first_seen = RecentIds(capacity=10 * FUZZ_INPUTS), set()
    duplicates = 0
    reasons: Counter[str] = Counter()
    for raw, result in zip(inputs, results):
        assert type(result) in (Event, Rejection)
        if type(result) is Rejection:
            assert result.reason in REASONS
            assert result.raw == (b"" if raw is None else raw)
            assert result.field is None or result.field in SPEC.events.fields
            assert isinstance(result.detail, str) and 0 < len(result.detail) <= 200
            reasons[result.reason] += 1
            continue
        _assert_well_formed_event(result, raw)
        if recent.seen_before(result.event_id):
            assert result.event_id in first_seen
            duplicate = reject_duplicate(result)
            assert duplicate.reason == "duplicate_event_id" and duplicate.raw == raw
            duplicates += 1
        else:
            assert result.event_id not in first_seen
            first_seen.add(result.event_id)

    # The generator really produced each kind of hostility it claims to.
    assert set(reasons) == set(REASONS) - {"duplicate_event_id"}, reasons
    assert duplicates > 50
    events = [r for r in results if type(r) is Event]
    assert len(events) > 1000
    assert sum(len(e.unseen) for e in events) > 100
    assert any(not math.isclose(e.event_time, NOW) for e in events)
