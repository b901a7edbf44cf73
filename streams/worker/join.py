"""The outcome join: each prediction (with the feature row that scored it) meets its ground truth.

Outcomes may arrive before or long after their prediction, and the outcomes topic may be partitioned
by any client's partitioner, so both sides are first re-keyed by event id onto internal topics with
the same partition function (`join_partition`); partition p of both is then joined by one worker in a
changelog-backed table (partition = join partition, key = event id) holding whichever side came first:

    {"p": <pending prediction>, "at": <wall time it arrived>}   or   {"o": <outcome>, "at": ...}

A waiting prediction is kept as the JSON bytes it arrived as and decoded only when its outcome
comes: every scored event passes through here, and decoding it to re-encode it for the changelog cost
more than the join itself. (Changelogs that earlier versions wrote hold it decoded, as a dict.)

When the other side arrives, the joined record goes to the `labeled` topic and the entry is deleted.
A second prediction for a waiting id (re-emitted after a worker restart) leaves the first in place.
Entries older than the spec's `outcomes.join_ttl` (wall clock) expire and are counted. The table lives
on local disk (`join_table`), so millions of predictions may wait weeks for their labels while memory
holds only the entries changed since the last checkpoint; its expiry index makes a sweep cost what
expires, and its counts by side make the waiting gauge cost what changed. A second outcome for a waiting
prediction's id is counted as a duplicate; one for an id already joined waits like any other unmatched
outcome and expires.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from driftloop.spec import PipelineSpec
from driftloop.streams.contracts import CONTRACT_VERSION, iso_time
from driftloop.streams.state.changelog import ChangelogTable
from driftloop.streams.state.store import StateMemory
from driftloop.streams.worker.validation import Rejection

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def join_partition(event_id: str, partitions: int) -> int:
    """The internal join partition of an event id: CRC-32, the same in every worker and for both sides."""
    return zlib.crc32(event_id.encode()) % partitions


@dataclass(frozen=True, slots=True)
class Outcome:
    event_id: str
    label: int
    outcome_time: float


# An outcome is a few fields; one this large is not an outcome, and re-keying it whole onto the
# internal topic could exceed the producer's message limit.
MAX_OUTCOME_BYTES = 65536


def parse_outcome(raw: bytes | None, spec: PipelineSpec, now: float) -> Outcome | Rejection:
    """An outcome record by the spec's `outcomes` section; anything else is a Rejection for the DLQ."""
    names = spec.outcomes
    if raw is None:
        return Rejection("invalid_json", None, "no value (a tombstone)", b"")
    if len(raw) > MAX_OUTCOME_BYTES:
        return Rejection("too_large", None, f"{len(raw)} bytes, more than {MAX_OUTCOME_BYTES}", raw)
    try:
        doc = _decode(raw)
    except Exception as exc:  # DecodeError, deep nesting: bad input, not a crash
        return Rejection("invalid_json", None, str(exc)[:200] or type(exc).__name__, raw)
    if type(doc) is not dict:
        return Rejection("not_an_object", None, "the outcome is not a JSON object", raw)
    event_id = doc.get(names.id_field)
    if type(event_id) is int:
        event_id = str(event_id)
    if type(event_id) is not str or not event_id:
        return Rejection("missing_field", names.id_field, "an outcome needs the event id it labels", raw)
    label = doc.get(names.label)
    if label is None:
        return Rejection("missing_field", names.label, "an outcome needs its label", raw)
    if label not in (0, 1) or type(label) not in (int, bool):
        return Rejection("wrong_type", names.label, f"the label must be 0/1 or false/true, not {label!r}", raw)
    when = doc.get(names.time_field)
    if when is None:
        outcome_time = now
    elif type(when) in (int, float) and math.isfinite(when) and 0 <= when < 253402300800:
        outcome_time = float(when)
    elif type(when) is str:
        try:
            parsed = datetime.fromisoformat(when)
        except ValueError:
            return Rejection("bad_timestamp", names.time_field, f"{when[:64]!r} is not ISO-8601", raw)
        outcome_time = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    else:
        return Rejection("bad_timestamp", names.time_field, "the outcome time must be ISO-8601 or epoch seconds", raw)
    return Outcome(event_id, int(label), outcome_time)


def join_table(topic: str, partitions: int, *, directory: Path, memory: StateMemory) -> ChangelogTable:
    """The join's changelog table: entries counted by side, indexed by arrival for expiry."""
    # an entry is mostly its prediction's JSON bytes: its Python objects take little more than its encoding
    return ChangelogTable(
        "join",
        topic,
        partitions,
        directory=directory,
        memory=memory,
        kind_of=_side,
        expiry_time=_arrived,
        python_bytes_per_encoded_byte=1.5,
    )


def _side(entry: dict) -> str:
    return "prediction" if "p" in entry else "outcome"


def _arrived(entry: dict) -> float:
    return entry["at"]


@dataclass
class JoinResult:
    labeled: list[tuple[bytes, bytes]] = field(default_factory=list)  # (entity key, labeled JSON)
    counts: Counter = field(default_factory=Counter)  # joined | duplicate | expired_unmatched


class OutcomeJoiner:
    def __init__(self, spec: PipelineSpec, table, *, clock=time.time):
        self.spec = spec
        self.table = table  # ChangelogTable: join partition -> event id -> waiting side
        self.ttl = spec.outcomes.join_ttl
        self.clock = clock

    def add_pending(self, partition: int, event_id: str, pending_json: bytes, result: JoinResult) -> None:
        """`event_id` is the one `pending_json` holds: the scorer's, or the key of its `…-pending` record."""
        self._add_pending(partition, event_id, pending_json, self.table.get(partition, event_id), result)

    def add_pendings(self, partition: int, pendings: list[tuple[str, bytes]], result: JoinResult) -> None:
        """`add_pending` for each (event id, pending JSON) of a batch, reading the table once for them all."""
        seen: set[str] = set()
        for (event_id, pending_json), waiting in zip(
            pendings, self.table.get_many(partition, [event_id for event_id, _ in pendings])
        ):
            if event_id in seen:  # twice in one batch: what waits is what the first one left
                waiting = self.table.get(partition, event_id)
            seen.add(event_id)
            self._add_pending(partition, event_id, pending_json, waiting, result)

    def _add_pending(
        self, partition: int, event_id: str, pending_json: bytes, waiting: dict | None, result: JoinResult
    ) -> None:
        if waiting is None:
            self.table.set(partition, event_id, {"p": pending_json, "at": self.clock()})
        elif "o" in waiting:
            self._joined(partition, _decode(pending_json), waiting["o"], result)
        # else: a prediction re-emitted after a worker restart; the first one holds the row that was
        # really scored (the replay's row may count the event twice), so it stays

    def add_outcome(self, partition: int, outcome: Outcome, result: JoinResult) -> None:
        side = {"label": outcome.label, "time": outcome.outcome_time}
        waiting = self.table.get(partition, outcome.event_id)
        if waiting is None:
            self.table.set(partition, outcome.event_id, {"o": side, "at": self.clock()})
        elif "p" in waiting:
            pending = waiting["p"]
            self._joined(partition, pending if type(pending) is dict else _decode(pending), side, result)
        else:
            result.counts["duplicate"] += 1

    def expire(self, partitions: list[int], result: JoinResult) -> None:
        bound = self.clock() - self.ttl
        for p in partitions:
            for _key, entry in self.table.expire(p, bound):
                # an outcome that never met its prediction, or a prediction whose outcome never came
                result.counts["expired_unmatched" if "o" in entry else "prediction_expired"] += 1

    def waiting(self) -> Counter:
        """How many predictions and outcomes wait for their other side (for the join_pending gauge)."""
        sides: Counter[str] = Counter()
        for p in self.table.assigned:
            sides.update(self.table.counts(p))
        return sides

    def _joined(self, partition: int, pending: dict, outcome: dict, result: JoinResult) -> None:
        self.table.delete(partition, pending["event_id"])
        label = outcome["label"]
        record = {
            "contract": CONTRACT_VERSION,
            "event_id": pending["event_id"],
            "entity": pending["entity"],
            "event_time": iso_time(pending["event_time"]),
            "score": pending["score"],
            "decision": int(pending["score"] >= self.spec.model.threshold),
            "label": label,
            "model_name": self.spec.model.name,
            "model_version": pending["model_version"],
            "variant": pending["variant"],
            "features": pending["row"],
            "outcome_time": iso_time(outcome["time"]),
            "predicted_at": iso_time(pending["predicted_at"]),
            "joined_at": iso_time(self.clock()),
            # absent in pending records of older workers
            "latency_ms": pending.get("latency_ms"),  # Kafka append to scored, queueing included
            "model_ms": pending.get("model_ms"),  # the serving model's own scoring time per event
        }
        if "shadow" in pending:
            record["shadow"] = pending["shadow"]
        result.labeled.append((pending["entity"].encode(), _encode(record)))
        result.counts["joined"] += 1
