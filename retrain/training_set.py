"""The training set of a retrain request: a window of the `labeled` log, features joined point-in-time from Feast.

1. **Window.** Every partition of `labeled` is read from the beginning to its end (assigned, not a group:
   nothing is committed), streamed: only the window so far is held. The log is at-least-once, so only the
   first record of an event id counts. Records with event time >= `train_from` (when given) are
   candidates; the newest `spec.retrain.window_events` of them by event time, oldest first, are the
   window (the spec caps it, see driftloop/spec.py). Fewer than `spec.retrain.min_rows` raises
   `NotEnoughData` (labels keep arriving: the caller waits and asks again).
2. **Features.** Each window row's vector comes from the feature view's offline store as of the row's
   event time (`OfflineHistory`, point-in-time correct, as Feast's `get_historical_features`, see
   `feast_offline`). The labeled record's event time is ISO-8601 truncated to the millisecond while the
   store keeps microseconds, so each row is asked about at the last microsecond of its millisecond. Two
   events of one entity in one millisecond would both get the later one's vector, so such rows are not
   asked: the store cannot tell them apart. They, and rows the store has no vector for (written by
   nothing, or not yet), keep the features recorded in their labeled record, which is exactly what was
   scored. The counts of both sources, and of stored vectors that differ from the recorded ones (the
   join reproduces the scored row, so these should be 0), are reported with the set.
3. **Fingerprint.** SHA-256 over the ordered (event_id, label, inputs in spec order) rows.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.features.feast.offline import OfflineHistory
from driftloop.spec import PipelineSpec
from driftloop.streams.contracts import iso_time

_LOG = logging.getLogger("driftloop.retrain.training_set")


class _Labeled(msgspec.Struct):
    """The fields of a `labeled` record the training set reads (others, e.g. latency_ms, are ignored)."""

    event_id: str
    entity: str
    event_time: datetime
    label: int | bool
    features: dict[str, Any]
    score: float
    model_version: int


@dataclass(frozen=True)
class LabeledRow:
    event_id: str
    entity: str
    event_time: float  # epoch seconds (millisecond precision, as recorded)
    label: int
    features: dict[str, Any]  # the row that was scored, by model input name
    joined_ms: int  # Kafka timestamp of the labeled record: when the outcome was joined
    served_score: float  # what the serving model predicted, live
    served_version: int


@dataclass(frozen=True)
class LabeledWindow:
    rows: list[LabeledRow]  # oldest first
    read: int  # labeled records read
    # Records dropped because their event id came earlier and is in the window. A repeat of an event outside
    # the window is counted below instead: finding it would mean remembering every event id of the log.
    duplicates: int
    before_train_from: int  # records older than train_from
    eligible: int  # records at or after train_from, not counted as duplicates (the window is the newest)


class NotEnoughData(DriftloopError):
    """Fewer labelled rows than `retrain.min_rows` in the window yet."""

    def __init__(self, found: int, needed: int, train_from: float | None):
        since = "" if train_from is None else f" since {iso_time(train_from)}"
        super().__init__(f"{found} labelled rows{since}, {needed} needed")
        self.found, self.needed = found, needed


@dataclass(frozen=True)
class TrainingSet:
    rows: list[dict[str, Any]]  # model inputs, oldest first
    labels: list[int]
    event_ids: list[str]
    event_times: list[float]
    joined_ms: list[int]
    fingerprint: str
    from_feast: int  # rows whose features came from Feast's point-in-time join
    from_labeled: int  # rows that kept their labeled features (Feast had no unambiguous answer)
    feast_mismatches: int  # Feast answers that differ from the labeled features (used: Feast's)
    window: LabeledWindow

    def __len__(self) -> int:
        return len(self.rows)


def read_window(
    bootstrap: str, topic: str, spec: PipelineSpec, train_from: float | None, *, group: str, timeout: float = 60.0
) -> LabeledWindow:
    """The newest `spec.retrain.window_events` distinct labelled events at or after train_from, oldest first."""
    decode = msgspec.json.Decoder(_Labeled).decode
    size = spec.retrain.window_events
    consumer = kafka.consumer(
        bootstrap, group, **{"enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 25}
    )
    # The window so far: a min-heap by (event time, event id), and the ids it holds. A repeat of an event
    # has the event's time, so it sorts equal to its first record: that one is either in the heap (the
    # repeat is dropped) or was pushed out, and then the repeat cannot enter either. So duplicates are
    # found without remembering every event id of the log.
    newest: list[tuple[float, str, LabeledRow]] = []
    in_window: set[str] = set()
    read = duplicates = early = eligible = 0
    try:
        metadata = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise DriftloopError(f"the labeled topic {topic!r} does not exist")
        for message in kafka.consume_to_end(
            consumer, topic, metadata.partitions, timeout=timeout, batch=5000, poll=0.5
        ):
            read += 1
            try:
                record = decode(message.value())
            except msgspec.DecodeError as exc:  # also its subclass ValidationError (a missing field)
                _LOG.warning(
                    "skipping an unreadable labeled record at %s[%d]@%d: %s",
                    topic,
                    message.partition(),
                    message.offset(),
                    exc,
                )
                continue
            if record.event_id in in_window:
                duplicates += 1
                continue
            event_time = record.event_time.timestamp()
            if train_from is not None and event_time < train_from:
                early += 1
                continue
            eligible += 1
            if len(newest) == size and (event_time, record.event_id) <= newest[0][:2]:
                continue
            row = LabeledRow(
                record.event_id,
                record.entity,
                event_time,
                int(bool(record.label)),
                record.features,
                message.timestamp()[1],
                record.score,
                record.model_version,
            )
            if len(newest) == size:
                in_window.discard(heapq.heappop(newest)[1])
            heapq.heappush(newest, (event_time, record.event_id, row))
            in_window.add(record.event_id)
    finally:
        consumer.close()
    return LabeledWindow([row for _, _, row in sorted(newest)], read, duplicates, early, eligible)


def build_training_set(
    history: OfflineHistory, window: LabeledWindow, spec: PipelineSpec, train_from: float | None
) -> TrainingSet:
    """Join the window's rows to their point-in-time Feast vectors; raises NotEnoughData below retrain.min_rows."""
    if len(window.rows) < spec.retrain.min_rows:
        raise NotEnoughData(len(window.rows), spec.retrain.min_rows, train_from)
    entity_type = int if spec.events.fields[spec.events.entity].type == "int" else str
    # The recorded event time is truncated to the millisecond; Feast holds microseconds: ask at the
    # millisecond's last microsecond, so the row of that very event is at or before the asked time.
    keys = [(entity_type(row.entity), round(row.event_time * 1000) * 1000 + 999) for row in window.rows]
    unambiguous = {key for key, count in Counter(keys).items() if count == 1}
    answers = history.features([key for key in keys if key in unambiguous])
    by_key = dict(zip((key for key in keys if key in unambiguous), answers))
    inputs = spec.model_inputs
    rows, mismatches, from_feast = [], 0, 0
    for labeled, key in zip(window.rows, keys):
        recorded = {name: labeled.features.get(name) for name in inputs}
        answer = by_key.get(key)
        if answer is None:
            rows.append(recorded)
            continue
        from_feast += 1
        if answer != recorded:
            mismatches += 1
        rows.append(answer)
    if mismatches:
        _LOG.warning(
            "%d of %d Feast vectors differ from the features recorded in their labeled records", mismatches, from_feast
        )
    labels = [row.label for row in window.rows]
    event_ids = [row.event_id for row in window.rows]
    return TrainingSet(
        rows=rows,
        labels=labels,
        event_ids=event_ids,
        event_times=[row.event_time for row in window.rows],
        joined_ms=[row.joined_ms for row in window.rows],
        fingerprint=fingerprint(event_ids, labels, rows, inputs),
        from_feast=from_feast,
        from_labeled=len(rows) - from_feast,
        feast_mismatches=mismatches,
        window=window,
    )


def recorded_training_set(rows: Sequence[LabeledRow], spec: PipelineSpec, train_from: float | None) -> TrainingSet:
    """The window `read_window` would take from these labeled rows (in join order), with the features they were
    scored with (no Feast: the event-time backtest holds the rows it scored); NotEnoughData below retrain.min_rows."""
    eligible = [row for row in rows if train_from is None or row.event_time >= train_from]
    chosen = sorted(eligible, key=lambda row: (row.event_time, row.event_id))[-spec.retrain.window_events :]
    window = LabeledWindow(chosen, len(rows), 0, len(rows) - len(eligible), len(eligible))
    if len(chosen) < spec.retrain.min_rows:
        raise NotEnoughData(len(chosen), spec.retrain.min_rows, train_from)
    inputs = spec.model_inputs
    features = [{name: row.features.get(name) for name in inputs} for row in chosen]
    labels = [row.label for row in chosen]
    event_ids = [row.event_id for row in chosen]
    return TrainingSet(
        rows=features,
        labels=labels,
        event_ids=event_ids,
        event_times=[row.event_time for row in chosen],
        joined_ms=[row.joined_ms for row in chosen],
        fingerprint=fingerprint(event_ids, labels, features, inputs),
        from_feast=0,
        from_labeled=len(chosen),
        feast_mismatches=0,
        window=window,
    )


def fingerprint(
    event_ids: Sequence[str], labels: Sequence[int], rows: Sequence[dict[str, Any]], inputs: Sequence[str]
) -> str:
    """SHA-256 of the ordered (event_id, label, [inputs in spec order]) rows, one JSON line each."""
    digest = hashlib.sha256()
    for event_id, label, row in zip(event_ids, labels, rows, strict=True):
        line = json.dumps([event_id, label, [row.get(name) for name in inputs]], separators=(",", ":"))
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()
