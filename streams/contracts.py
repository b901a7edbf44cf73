"""The JSON records driftloop writes to Kafka, as documented in the README's topic contracts.

They are plain JSON so any client (kcat, Java, Go) can read them; the DLQ envelope keeps the
original bytes exactly (base64), because a bad record may not be text at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from driftloop.signing import SigningKey

_encode = msgspec.json.Encoder().encode  # ~4x json.dumps on the per-prediction hot path

CONTRACT_VERSION = 1
# Kafka header of the control records (retrain requests, audit records): the signing key's HMAC of the
# topic name and the record's exact bytes, so a record written without the key, or copied from another
# topic, is refused by the consumers that act on it.
SIGNATURE_HEADER = "driftloop-signature"
_RECORD_DOMAIN = "driftloop-record-v1"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record was read from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None


# Dead-letter reasons of the worker itself, beside the validator's (streams/worker/validation.py REASONS).
WORKER_DLQ_REASONS: dict[str, str] = {
    "processing_failed": "the event's features could not be computed (a defect; its entity's windows restart)",
    "scoring_failed": "the serving model raised on this event, or returned a non-finite score",
    "produce_failed": "the broker refused the event's prediction (e.g. larger than its message limit)",
}

# The producer's default message.max.bytes is 1,000,000 and a broker's is about the same, while an
# input record can be far larger (the embedded broker accepts 10 MB): an envelope that carried such a
# record whole would fail to produce and take the worker with it. Inputs up to this size travel whole
# (base64 and, when UTF-8, as text: about 2.4x their size); larger ones as a prefix, a size and a hash.
DLQ_WHOLE_ORIGINAL_BYTES = 256 * 1024
DLQ_ENVELOPE_BYTES = 900_000  # JSON escapes a control character in six: such text is left out above this
DLQ_PREFIX_BYTES = 4096
DLQ_KEY_BYTES = 1024  # a longer key is replaced by its SHA-256 (as the record's key and in `source`)


def dead_letter(original: bytes | None, source: Source, reason: str, detail: str, field: str | None = None) -> bytes:
    """The DLQ envelope for an input that could not be scored; below 1 MB whatever the input's size."""
    original = original or b""
    truncated = len(original) > DLQ_WHOLE_ORIGINAL_BYTES
    kept = original[:DLQ_PREFIX_BYTES] if truncated else original
    record = {
        "contract": CONTRACT_VERSION,
        "reason": reason,
        "field": field,
        "detail": detail[:500],
        "source": {
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "timestamp_ms": source.timestamp_ms,
            "key": _text_or_none(dead_letter_key(source.key)),
        },
        "original_b64": base64.b64encode(kept).decode("ascii"),
        "original_utf8": _text_or_none(kept, prefix=truncated),
        "original_size": len(original),
        "original_sha256": hashlib.sha256(original).hexdigest(),
        "original_truncated": truncated,
        "dead_lettered_at": iso_time(datetime.now(UTC).timestamp()),
    }
    envelope = json.dumps(record, separators=(",", ":")).encode()
    if len(envelope) > DLQ_ENVELOPE_BYTES:
        record["original_utf8"] = None  # original_b64 still has every byte
        envelope = json.dumps(record, separators=(",", ":")).encode()
    return envelope


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The DLQ record's key: the input's own, or its SHA-256 (hex) when it is longer than DLQ_KEY_BYTES."""
    if key is None or len(key) <= DLQ_KEY_BYTES:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


def original_bytes(envelope: dict[str, Any]) -> bytes:
    """Recover the exact input bytes from a parsed DLQ envelope (for replaying a fixed record).

    Raises ValueError for an envelope of an oversized input, which carries only its prefix.
    """
    if envelope.get("original_truncated"):
        raise ValueError(
            f"the original was {envelope['original_size']} bytes; the envelope keeps only its "
            f"first {DLQ_PREFIX_BYTES} (SHA-256 {envelope['original_sha256']})"
        )
    return base64.b64decode(envelope["original_b64"])


class Prediction(msgspec.Struct, frozen=True):
    """One record per valid event on the predictions topic; the field order is the JSON key order."""

    contract: int
    event_id: str
    entity: str
    event_time: str  # ISO-8601, UTC, milliseconds
    score: float
    decision: int
    threshold: float
    model_name: str
    model_version: int
    variant: str
    feature_view: str
    feature_view_version: str
    latency_ms: float


def prediction(
    *,
    event_id: str,
    entity: str,
    event_time: float,
    score: float,
    threshold: float,
    model_name: str,
    model_version: int,
    variant: str,
    feature_view: str,
    feature_view_version: str,
    latency_ms: float,
) -> bytes:
    """One record per valid event on the predictions topic."""
    # A Struct, not a dict: cheaper to build and to encode, once per prediction.
    return _encode(
        Prediction(
            CONTRACT_VERSION,
            event_id,
            entity,
            iso_time(event_time),
            round(float(score), 6),
            int(score >= threshold),
            threshold,
            model_name,
            model_version,
            variant,
            feature_view,
            feature_view_version,
            round(latency_ms, 3),
        )
    )


def observation(
    *,
    worker: str,
    valid: int,
    rows: list[dict[str, Any]],
    columns: tuple[str, ...],
    event_time_max: float | None,
    dlq: dict[str, int],
    unseen: dict[str, int],
    missing: dict[str, int],
    champion_version: int | None,
) -> bytes:
    """What one scored batch looked like, for the drift agent (internal topic `driftloop-<spec>-observations`).

    rows: the model-input rows of the batch's valid events, columnar (column -> values in event order),
    so data drift is measured on exactly what the models read; the counters feed data-quality drift.
    """
    record = {
        "contract": CONTRACT_VERSION,
        "worker": worker,
        "at": time.time(),
        "event_time_max": event_time_max,
        "valid": valid,
        "dlq": dlq,
        "unseen": unseen,
        "missing": missing,
        "champion_version": champion_version,
        "rows": {name: [row.get(name) for row in rows] for name in columns},
    }
    return _encode(record)


def audit(
    *,
    actor: str,
    action: str,
    model_name: str,
    reason: str,
    version: int | None = None,
    details: dict[str, Any] | None = None,
    at: float | None = None,
) -> bytes:
    """One decision on the audit topic, automatic or by an operator, taken or declined.

    actor: "trigger" | "retrain" | "promotion" | "worker" | "operator". action, e.g. "retrain_triggered",
    "retrain_declined", "registered", "challenger_set", "rejected", "retrain_failed", "trial_started",
    "canary_waiting", "promoted", "rolled_back", "alias_moved", "model_refused", "breaker_opened",
    "breaker_closed". reason: one human-readable sentence.
    """
    record = {
        "contract": CONTRACT_VERSION,
        "at": iso_time(time.time() if at is None else at),
        "actor": actor,
        "action": action,
        "model_name": model_name,
        "version": version,
        "reason": reason,
        "details": details or {},
    }
    return json.dumps(record, separators=(",", ":"), default=str).encode()


def retrain_request(
    *,
    request_id: str,
    model_name: str,
    champion_version: int | None,
    reason: str,
    train_from: float | None,
    drift_report: dict[str, Any] | None,
    current_rows: dict[str, list[Any]] | None,
    at: float | None = None,
) -> bytes:
    """A request on the retrain-requests topic (from the trigger policy or `driftloop retrain`).

    reason: "warmup" | "data_drift" | "concept_drift" | "schedule" | "operator". train_from: event time (epoch s)
    of the estimated drift point, or None to train on the newest `retrain.window_events` labelled
    events. current_rows: the drift window's model-input rows, columnar, for the Evidently report.
    """
    record = {
        "contract": CONTRACT_VERSION,
        "request_id": request_id,
        "at": iso_time(time.time() if at is None else at),
        "model_name": model_name,
        "champion_version": champion_version,
        "reason": reason,
        "train_from": None if train_from is None else iso_time(train_from),
        "drift_report": drift_report,
        "current_rows": current_rows,
    }
    return json.dumps(record, separators=(",", ":"), default=str).encode()


def signature_headers(key: SigningKey, topic: str, value: bytes) -> list[tuple[str, str | bytes | None]]:
    """The headers to produce a control record with, on `topic`."""
    return [(SIGNATURE_HEADER, key.sign(_RECORD_DOMAIN, topic.encode() + b"\0" + value).encode())]


def signed_by(key: SigningKey, topic: str, value: bytes | None, headers: Any) -> bool:
    """Whether a record read from `topic` carries a valid signature (headers as confluent-kafka or Faust give them)."""
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    signature = next((v for k, v in pairs if k == SIGNATURE_HEADER), None)
    return key.verify(_RECORD_DOMAIN, topic.encode() + b"\0" + (value or b""), signature)


def iso_time(epoch_seconds: float) -> str:
    """UTC ISO-8601 with milliseconds ("...T12:00:00.123Z"), exactly as datetime prints it, 2.5x faster.

    datetime.fromtimestamp rounds the fraction to microseconds (half to even) and isoformat then
    truncates to milliseconds; so does this, with the whole seconds' text cached (events of a batch
    share seconds), because this runs for every prediction and every labeled record.
    """
    if epoch_seconds < 0:  # never for a validated event; the fraction arithmetic below assumes t >= 0
        return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    whole = math.floor(epoch_seconds)
    micros = round((epoch_seconds - whole) * 1_000_000)  # exact subtraction for t >= 0; round() is half-even
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    prefix = _SECONDS_TEXT.get(whole)
    if prefix is None:
        if len(_SECONDS_TEXT) >= 65_536:
            _SECONDS_TEXT.clear()
        prefix = _SECONDS_TEXT[whole] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{prefix}.{micros // 1000:03d}Z"


_SECONDS_TEXT: dict[int, str] = {}


def _text_or_none(data: bytes | None, prefix: bool = False) -> str | None:
    """The bytes as UTF-8 text, or None when they are not; a prefix may end inside a character."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if prefix and exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            return data[: exc.start].decode("utf-8")
        return None
