"""The JSON records driftloop writes to Kafka, as documented in the README's topic contracts.

They are plain JSON so any client (kcat, Java, Go) can read them; the DLQ envelope keeps the
original bytes exactly (base64), because a bad record may not be text at all.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode  # ~4x json.dumps on the per-prediction hot path

CONTRACT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record was read from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None


def dead_letter(original: bytes | None, source: Source, reason: str, detail: str, field: str | None = None) -> bytes:
    """The DLQ envelope for an input that could not be scored."""
    record = {
        "contract": CONTRACT_VERSION,
        "reason": reason,
        "field": field,
        "detail": detail,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset,
                   "timestamp_ms": source.timestamp_ms, "key": _text_or_none(source.key)},
        "original_b64": base64.b64encode(original or b"").decode("ascii"),
        "original_utf8": _text_or_none(original),
        "dead_lettered_at": iso_time(datetime.now(timezone.utc).timestamp()),
    }
    return json.dumps(record, separators=(",", ":")).encode()


def original_bytes(envelope: dict[str, Any]) -> bytes:
    """Recover the exact input bytes from a parsed DLQ envelope (for replaying a fixed record)."""
    return base64.b64decode(envelope["original_b64"])


def prediction(*, event_id: str, entity: str, event_time: float, score: float, threshold: float, model_name: str,
               model_version: int, variant: str, feature_view: str, feature_view_version: str,
               latency_ms: float) -> bytes:
    """One record per valid event on the predictions topic."""
    record = {
        "contract": CONTRACT_VERSION,
        "event_id": event_id,
        "entity": entity,
        "event_time": iso_time(event_time),
        "score": round(float(score), 6),
        "decision": int(score >= threshold),
        "threshold": threshold,
        "model_name": model_name,
        "model_version": model_version,
        "variant": variant,
        "feature_view": feature_view,
        "feature_view_version": feature_view_version,
        "latency_ms": round(latency_ms, 3),
    }
    return _encode(record)


def iso_time(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_or_none(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
