"""One run's records read back from a topic: those written between two wall times.

A record is kept when its Kafka timestamp lies in [since, until]; the reading itself (from the
beginning, to each partition's end or its first record after `until`, skipping what does not decode)
is `driftloop.kafka.read_topic`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from driftloop import kafka

T = TypeVar("T")
_decode_json = msgspec.json.Decoder().decode


def read_between(
    bootstrap: str,
    topic: str,
    since: float,
    until: float,
    decode: Callable[[bytes], T] = _decode_json,
    *,
    timeout: float = 120.0,
) -> list[T]:
    """The decoded values of `topic` written between `since` and `until` (epoch seconds), in timestamp order.

    `decode` turns a value into what is returned (default: the JSON document); a value it raises on is
    skipped (see `driftloop.kafka.read_topic`).
    """
    return kafka.read_topic(bootstrap, topic, since=since, until=until, decode=decode, timeout=timeout)


class Labeled(msgspec.Struct):
    """What the load tools read of a `labeled` record (streams/worker/join.py writes it; other fields are skipped)."""

    event_id: str
    predicted_at: str
    joined_at: str
    decision: int
    label: int
    variant: str
    model_version: int
    features: dict[str, Any]


decode_labeled = msgspec.json.Decoder(Labeled).decode


def json_object(value: bytes | None) -> dict[str, Any]:
    """A JSON object record; ValueError for anything else, a tombstone too (so read_between skips it)."""
    if value is None:
        raise ValueError("a tombstone")
    document = _decode_json(value)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document
