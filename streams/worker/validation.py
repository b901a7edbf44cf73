"""Event validation: raw Kafka bytes in, a typed `Event` or a `Rejection` (for events.dlq) out.

The rules come from the spec's `events` section (see the README's spec reference):

- Bytes that are not UTF-8, strict RFC 8259 JSON are `invalid_json`. `NaN`, `Infinity` and numbers
  that overflow a double (`1e999`) are not JSON, but Python's `json.dumps` writes the first two by
  default; when one of them sits in a spec field the rejection says `not_finite` for that field, any
  other place makes the record `invalid_json`. Accepted events are therefore always strict JSON.
- Input larger than `max_bytes` is `too_large` and is never parsed; a Kafka tombstone (value None)
  is `invalid_json` with empty `raw`.
- Unknown extra fields are ignored, so producers can add fields before the spec learns about them.
- A category value outside the field's `values` becomes `UNSEEN` and is listed in `Event.unseen`;
  it is never a rejection (and so a category has no max_length).
- The id and entity fields may be JSON strings or integers and become `str`; an empty one counts as
  missing, since it cannot key anything.
- Timestamps are ISO-8601 strings (anything `datetime.fromisoformat` reads; naive means UTC) or
  epoch seconds; they must lie in years 1970..9999 (epoch milliseconds land beyond 9999). Other
  timestamp fields than the event time become float epoch seconds in `Event.values`.

Duplicate detection is not the validator's job: it is stateless, while the agent keeps a
`RecentIds` per partition and calls `reject_duplicate` on a repeat.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from driftloop.spec import UNSEEN, FieldSpec, PipelineSpec

REASONS: dict[str, str] = {
    "invalid_json": "the record is not UTF-8 JSON (or is a tombstone with no value)",
    "not_an_object": "the JSON document is not an object",
    "too_large": "the record is larger than the validator's max_bytes; it was not parsed",
    "missing_field": "a required field is absent, null, or (id/entity) empty",
    "wrong_type": "a field has the wrong JSON type for its spec type",
    "not_finite": "a number field is NaN or infinite",
    "out_of_range": "a number is below the field's min or above its max (an integer: or outside 64 bits)",
    "too_long": "a string is longer than the field's max_length",
    "bad_timestamp": "a timestamp is not ISO-8601 or epoch seconds, or lies outside years 1970..9999",
    "event_time_in_future": "the event time is further ahead of the worker's clock than max_future_skew",
    "duplicate_event_id": "an event with this id was already seen on this partition",
}

_MAX_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z: datetime's ceiling
# Whatever the spec says, an int field is stored as int64 (Feast, parquet): a larger one would fail the
# Feast write and with it every later checkpoint, so it is out of range here, at the door.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_JSON_TYPE = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    entity: str
    event_time: float  # epoch seconds, UTC
    values: dict[str, Any]  # every other spec field, typed; None for an absent optional field
    unseen: tuple[str, ...]  # category fields whose value was mapped to UNSEEN
    missing: tuple[str, ...]  # optional fields that were absent or null
    raw: bytes


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # a key of REASONS
    field: str | None
    detail: str
    raw: bytes  # the original record, for events.dlq (b"" for a tombstone)


class _Invalid(Exception):
    """Raised by a field checker; the validator turns it into a Rejection naming the field."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail


def _kind(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _bounds(spec: FieldSpec) -> tuple[float, float]:
    return (-math.inf if spec.min is None else spec.min), (math.inf if spec.max is None else spec.max)


def _out_of_range(spec: FieldSpec, v: Any) -> _Invalid:
    if spec.min is not None and v < spec.min:
        return _Invalid("out_of_range", f"below min {spec.min:g}")
    return _Invalid("out_of_range", f"above max {spec.max:g}")


def _float_checker(spec: FieldSpec) -> Callable[[Any], float]:
    lo, hi = _bounds(spec)

    def check(v):
        t = type(v)  # exact types: bool is a subclass of int and must not pass as a number
        if t is int:
            try:
                v = float(v)
            except OverflowError:
                raise _Invalid("out_of_range", "integer too large for a float") from None
        elif t is not float:
            raise _Invalid("wrong_type", f"expected a number, got {_kind(v)}")
        if not math.isfinite(v):
            raise _Invalid("not_finite", "NaN or infinite")
        if not lo <= v <= hi:
            raise _out_of_range(spec, v)
        return v

    return check


def _int_checker(spec: FieldSpec) -> Callable[[Any], int]:
    lo, hi = _bounds(spec)

    def check(v):
        t = type(v)
        if t is float:
            if not math.isfinite(v):
                raise _Invalid("not_finite", "NaN or infinite")
            if not v.is_integer():
                raise _Invalid("wrong_type", "expected an integer, got a fractional number")
            v = int(v)
        elif t is not int:
            raise _Invalid("wrong_type", f"expected an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            raise _out_of_range(spec, v)
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise _Invalid("out_of_range", "outside the 64-bit integer range")
        return v

    return check


def _bool_checker(spec: FieldSpec) -> Callable[[Any], bool]:
    def check(v):
        if v is True or v is False:
            return v
        raise _Invalid("wrong_type", f"expected true or false, got {_kind(v)}")

    return check


def _string_checker(spec: FieldSpec) -> Callable[[Any], str]:
    limit = spec.max_length

    def check(v):
        if type(v) is not str:
            raise _Invalid("wrong_type", f"expected a string, got {_kind(v)}")
        if len(v) > limit:
            raise _Invalid("too_long", f"longer than max_length {limit}")
        return v

    return check


def _category_checker(spec: FieldSpec) -> Callable[[Any], str]:
    known = frozenset(spec.values or ())

    def check(v):
        if type(v) is not str:
            raise _Invalid("wrong_type", f"expected a string, got {_kind(v)}")
        return v if v in known else UNSEEN

    return check


def _key_checker(spec: FieldSpec) -> Callable[[Any], str]:
    """The id and entity fields: a JSON string or integer, as str (Kafka keys and Feast entities are text)."""
    limit = spec.max_length
    lo, hi = _bounds(spec)
    # Checked before str(): converting a huge int is slow, and Python refuses past 4300 digits.
    too_many_digits = 10 ** min(limit, 4300)

    def check(v):
        t = type(v)
        if t is int:
            if not lo <= v <= hi:
                raise _out_of_range(spec, v)
            if abs(v) >= too_many_digits:
                raise _Invalid("too_long", f"longer than max_length {limit}")
            v = str(v)
        elif t is not str:
            raise _Invalid("wrong_type", f"expected a string or integer, got {_kind(v)}")
        if not v:
            raise _Invalid("missing_field", "empty")
        if len(v) > limit:
            raise _Invalid("too_long", f"longer than max_length {limit}")
        return v

    return check


def _timestamp_checker(spec: FieldSpec) -> Callable[[Any], float]:
    def check(v):
        t = type(v)
        if t is str:
            try:
                parsed = datetime.fromisoformat(v)
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=UTC)
                v = parsed.timestamp()
            except (ValueError, OverflowError):
                raise _Invalid("bad_timestamp", "not an ISO-8601 timestamp") from None
        elif t is float:
            if not math.isfinite(v):
                raise _Invalid("not_finite", "NaN or infinite")
        elif t is not int:  # ints stay exact here: float() of a huge one would overflow
            raise _Invalid("bad_timestamp", f"expected ISO-8601 text or epoch seconds, got {_kind(v)}")
        if v < 0:
            raise _Invalid("bad_timestamp", "before 1970")
        if v > _MAX_EPOCH:
            raise _Invalid("bad_timestamp", "after year 9999 (epoch milliseconds instead of seconds?)")
        return float(v)

    return check


_CHECKERS = {
    "float": _float_checker,
    "int": _int_checker,
    "bool": _bool_checker,
    "string": _string_checker,
    "category": _category_checker,
    "timestamp": _timestamp_checker,
}


class EventValidator:
    """Turns raw event records into `Event`s or `Rejection`s by the spec's `events` section.

    Stateless apart from the clock, so one instance can serve every partition.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        max_bytes: int = 65536,
        max_future_skew: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ):
        ev = spec.events
        self._id, self._entity, self._time = ev.id_field, ev.entity, ev.time_field
        self._max_bytes = max_bytes
        self._max_future_skew = max_future_skew
        self._clock = clock
        # (name, required, checker, is_category) per field, built once so validation is a flat loop.
        self._fields: list[tuple[str, bool, Callable[[Any], Any], bool]] = []
        for name, f in ev.fields.items():
            make = _key_checker if name in (ev.id_field, ev.entity) else _CHECKERS[f.type]
            self._fields.append((name, f.required, make(f), f.type == "category"))

    def validate(self, raw: bytes | None) -> Event | Rejection:
        return self._validate(raw, self._clock())

    def validate_batch(self, raws: list[bytes | None]) -> list[Event | Rejection]:
        """One result per record, in order; the clock is read once for the whole batch."""
        now = self._clock()
        validate = self._validate
        return [validate(raw, now) for raw in raws]

    def _validate(self, raw: bytes | None, now: float) -> Event | Rejection:
        if raw is None:
            return Rejection("invalid_json", None, "no value (a tombstone)", b"")
        if len(raw) > self._max_bytes:
            return Rejection("too_large", None, f"{len(raw)} bytes, more than {self._max_bytes}", raw)
        try:
            doc = _decode(raw)
        except Exception as exc:  # DecodeError, RecursionError on deep nesting, UnicodeDecodeError: all bad input
            return self._undecodable(raw, exc, now)
        return self._check(doc, raw, now)

    def _check(self, doc: Any, raw: bytes, now: float) -> Event | Rejection:
        if type(doc) is not dict:
            return Rejection("not_an_object", None, f"the document is a JSON {_kind(doc)}", raw)
        values: dict[str, Any] = {}
        missing: list[str] = []
        unseen: list[str] = []
        name = None
        try:
            for name, required, check, is_category in self._fields:
                value = doc.get(name)
                if value is None:
                    if required:
                        raise _Invalid("missing_field", "required field is missing or null")
                    missing.append(name)
                else:
                    value = check(value)
                    if is_category and value == UNSEEN:
                        unseen.append(name)
                values[name] = value
        except _Invalid as bad:
            return Rejection(bad.reason, name, bad.detail, raw)
        event_time = values.pop(self._time)
        if event_time > now + self._max_future_skew:
            return Rejection(
                "event_time_in_future",
                self._time,
                f"{event_time - now:.0f}s ahead of the clock (max {self._max_future_skew:g}s)",
                raw,
            )
        return Event(
            values.pop(self._id), values.pop(self._entity), event_time, values, tuple(unseen), tuple(missing), raw
        )

    def _undecodable(self, raw: bytes, exc: Exception, now: float) -> Rejection:
        """Cold path: say `not_finite` for a NaN/Infinity/1e999 in a spec field, else `invalid_json`.

        The stdlib parser reads those tokens as float nan/inf; if the record then fails a field check,
        that is the precise answer. If it would pass, it still is not JSON, so it stays invalid_json.
        """
        try:  # decode first: json.loads would also guess UTF-16/32 from raw bytes
            result = self._check(json.loads(raw.decode("utf-8")), raw, now)
        except Exception:  # RecursionError, UnicodeDecodeError, int-digits limit, ...
            result = None
        if isinstance(result, Rejection):
            return result
        return Rejection("invalid_json", None, str(exc)[:200] or type(exc).__name__, raw)


def reject_duplicate(event: Event) -> Rejection:
    """The DLQ record for an event whose id `RecentIds.seen_before` reported."""
    return Rejection("duplicate_event_id", None, f"event id {event.event_id!r} was already seen", event.raw)


class RecentIds:
    """The last `capacity` event ids, oldest evicted first: at-least-once delivery's duplicate filter.

    Bounded so memory stays flat; a duplicate older than `capacity` ids gets through, which is the
    price of that bound. An id is kept as its 64-bit hash, not its text (16 MB of heap instead of 44 MB for
    200,000 ids of 30 characters): two different ids share a hash with odds of about 1 in 10^9 over a
    full window, and the later one is then dead-lettered as a duplicate, never dropped unseen.
    """

    def __init__(self, capacity: int = 1_000_000):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._hashes: set[int] = set()
        self._order: deque[int] = deque()  # first sightings, oldest first

    def seen_before(self, event_id: str) -> bool:
        """True if `event_id` is among the recent ids; otherwise record it and return False."""
        fingerprint = hash(event_id)
        hashes = self._hashes
        if fingerprint in hashes:
            return True  # a repeat does not refresh its position: eviction is by first sighting
        hashes.add(fingerprint)
        order = self._order
        order.append(fingerprint)
        if len(order) > self.capacity:
            hashes.discard(order.popleft())
        return False

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, event_id: object) -> bool:
        return hash(event_id) in self._hashes
