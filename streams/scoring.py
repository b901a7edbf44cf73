"""The scoring hot path for one batch of event records: validate, window features, route, score.

No Kafka I/O happens here. `streams/pipeline.py` hands a batch of consumed records to
`EventScorer.process` and produces what comes back, so the path is testable and benchmarkable
in-process, and every stage is timed per batch (the `driftloop_stage_seconds` histogram).

Per event record, in order:
- `ingest`: `EventValidator` (spec rules) and the per-partition duplicate-id filter. A rejected record
  becomes a DLQ envelope with its original bytes, source coordinates and reason.
- `features`: the entity's window state is read from the entity-state table (changelog-backed,
  partition = the record's partition), updated by `FeatureComputer`, and written back. The row the
  model scores is the features plus the event fields the model reads, in `spec.model_inputs` order;
  that same row goes to Feast, so Feast serves exactly the vector that scored the event.
- `score`: the router names each entity's variant (champion, or canary for a stable hash share of
  entities); each variant's rows are scored in one `predict_proba` call. In shadow mode the challenger
  also scores every row; its score rides along to the outcome join and is never served.
- the outputs: one prediction per valid event, one pending-join record (prediction + row) keyed by
  event id for the outcome join, the Feast rows, and the batch's rows for the drift agent.

Replays after a crash: the table value keeps the offset of the last record applied to the entity's
windows. A record at or below it (consumed again because the crash came before the offset commit)
is scored on a copy of the state, so its prediction is emitted again but windows never count it twice.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from driftloop.features.windows import FeatureComputer
from driftloop.streams import contracts
from driftloop.streams.validation import Event, EventValidator, RecentIds, Rejection, reject_duplicate
from driftloop.spec import PipelineSpec

_encode = msgspec.json.Encoder().encode
_copy_state = msgspec.json.Decoder().decode


class Record(NamedTuple):
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None


@dataclass
class ScoredBatch:
    predictions: list[tuple[bytes, bytes]] = field(default_factory=list)  # (entity key, prediction JSON)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)  # (original key, envelope)
    pending: list[tuple[str, bytes]] = field(default_factory=list)  # (event id, pending-join JSON)
    feast_rows: list[dict[str, Any]] = field(default_factory=list)
    dlq_reasons: Counter = field(default_factory=Counter)
    unseen: Counter = field(default_factory=Counter)  # category field -> values mapped to the unseen bucket
    missing: Counter = field(default_factory=Counter)  # optional field -> absent values
    served: Counter = field(default_factory=Counter)  # (model version, variant) -> predictions
    latencies: list[float] = field(default_factory=list)  # seconds from Kafka timestamp to scored, per prediction
    rows: list[dict[str, Any]] = field(default_factory=list)  # the model-input row of each valid event
    event_time_max: float | None = None
    replayed: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


class EventScorer:
    """Turns batches of event records into predictions, DLQ records, pending joins and Feast rows."""

    def __init__(self, spec: PipelineSpec, states, router, *, feature_view: str, feature_view_version: str,
                 validator: EventValidator | None = None, recent_ids_capacity: int = 200_000):
        self.spec = spec
        self.states = states  # ChangelogTable: partition -> entity -> {"w": window state, "o": last offset}
        self.router = router
        self.validator = validator or EventValidator(spec)
        self.computer = FeatureComputer(spec)
        self.feature_view = feature_view
        self.feature_view_version = feature_view_version
        self._recent: dict[int, RecentIds] = {}
        self._recent_capacity = recent_ids_capacity
        feature_names = set(self.computer.names)
        self._inputs = [(name, name in feature_names) for name in spec.model_inputs]
        # The usual layout (the default model inputs): every feature in spec order, then event fields.
        names = tuple(self.computer.names)
        self._feature_led = spec.model_inputs[:len(names)] == names
        self._field_inputs = spec.model_inputs[len(names):]
        self._entity_field = spec.events.entity

    def forget(self, partitions: list[int]) -> None:
        """Partitions moved to another worker: drop their duplicate filters."""
        for p in partitions:
            self._recent.pop(p, None)

    def process(self, records: list[Record]) -> ScoredBatch:
        out = ScoredBatch()
        t0 = time.perf_counter()
        events = self._ingest(records, out)
        t1 = time.perf_counter()
        rows = self._features(events, out)
        t2 = time.perf_counter()
        scores = self._score(events, rows, out)
        shadow = self._shadow_scores(rows)
        t3 = time.perf_counter()
        self._emit(events, rows, scores, shadow, out)
        out.stage_seconds = {"ingest": t1 - t0, "features": t2 - t1, "score": t3 - t2}
        return out

    def _ingest(self, records: list[Record], out: ScoredBatch) -> list[tuple[Record, Event]]:
        results = self.validator.validate_batch([r.value for r in records])
        events = []
        for record, result in zip(records, results):
            if isinstance(result, Event):
                recent = self._recent.get(record.partition)
                if recent is None:
                    recent = self._recent[record.partition] = RecentIds(self._recent_capacity)
                if recent.seen_before(result.event_id) and not self._is_replay(record, result):
                    result = reject_duplicate(result)
            if isinstance(result, Rejection):
                self._dead_letter(record, result, out)
                continue
            events.append((record, result))
            for name in result.unseen:
                out.unseen[name] += 1
            for name in result.missing:
                out.missing[name] += 1
        return events

    def _is_replay(self, record: Record, event: Event) -> bool:
        """A repeated id is a replay (not a duplicate) when it is the same record consumed again."""
        state = self.states.get(record.partition, event.entity)
        return state is not None and record.offset <= state["o"]

    def _dead_letter(self, record: Record, rejection: Rejection, out: ScoredBatch) -> None:
        source = contracts.Source(record.topic, record.partition, record.offset, record.timestamp_ms, record.key)
        envelope = contracts.dead_letter(record.value, source, rejection.reason, rejection.detail, rejection.field)
        out.dead_letters.append((record.key, envelope))
        out.dlq_reasons[rejection.reason] += 1

    def _features(self, events: list[tuple[Record, Event]], out: ScoredBatch) -> list[dict[str, Any]]:
        update = self.computer.update
        get, put = self.states.get, self.states.set
        feature_led, fields, inputs = self._feature_led, self._field_inputs, self._inputs
        rows = []
        for record, event in events:
            entry = get(record.partition, event.entity)
            if entry is None:
                entry = {"w": None, "o": -1}
            if record.offset <= entry["o"]:
                out.replayed += 1
                _, feats = update(_copy_state(_encode(entry["w"])), event.event_time, event.values)
            else:
                entry["w"], feats = update(entry["w"], event.event_time, event.values)
                entry["o"] = record.offset
                put(record.partition, event.entity, entry)  # marks the key for the next changelog flush
            values = event.values
            if feature_led:  # `feats` is a fresh dict in input order already: extend it into the row
                for name in fields:
                    feats[name] = values.get(name)
                rows.append(feats)
            else:
                rows.append({name: feats[name] if is_feature else values.get(name) for name, is_feature in inputs})
        return rows

    def _score(self, events: list[tuple[Record, Event]], rows: list[dict[str, Any]],
               out: ScoredBatch) -> list[tuple[float, Any, float]]:
        """(score, serving model, model ms) per event; one predict_proba call per variant in the batch."""
        by_variant: dict[str, list[int]] = {}
        route = self.router.variant_for
        for i, (_, event) in enumerate(events):
            by_variant.setdefault(route(event.entity), []).append(i)
        scored: list[tuple[float, Any, float]] = [None] * len(events)  # type: ignore[list-item]
        for variant, indices in by_variant.items():
            serving = self.router.serving(variant)
            started = time.perf_counter()
            probabilities = serving.model.predict_proba([rows[i] for i in indices])
            # the model's own time per event (its batch call shared out), for the canary latency guardrail
            model_ms = (time.perf_counter() - started) * 1000 / len(indices)
            for i, p in zip(indices, probabilities.tolist()):
                scored[i] = (p, serving, model_ms)
            out.served[(serving.version, serving.variant)] += len(indices)
        return scored

    def _shadow_scores(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """In shadow mode: {"model_version", "score"} of the challenger for every row, else None."""
        shadow = self.router.variants.get("shadow")
        if shadow is None or not rows:
            return None
        started = time.perf_counter()
        probabilities = shadow.model.predict_proba(rows)
        model_ms = (time.perf_counter() - started) * 1000 / len(rows)
        return [{"model_version": shadow.version, "score": float(p), "model_ms": model_ms} for p in probabilities]

    def _emit(self, events: list[tuple[Record, Event]], rows: list[dict[str, Any]],
              scores: list[tuple[float, Any, float]], shadow: list[dict[str, Any]] | None, out: ScoredBatch) -> None:
        spec = self.spec
        threshold, model_name = spec.model.threshold, spec.model.name
        view, view_version, entity_field = self.feature_view, self.feature_view_version, self._entity_field
        prediction, encode = contracts.prediction, _encode
        predictions, pending, feast_rows, latencies = out.predictions, out.pending, out.feast_rows, out.latencies
        now = time.time()
        out.rows = rows
        if events:
            out.event_time_max = max(event.event_time for _, event in events)
        for i, ((record, event), row, (score, serving, model_ms)) in enumerate(zip(events, rows, scores)):
            appended_ms = record.timestamp_ms  # librdkafka reports -1 when a record carries no timestamp
            latency = max(now - appended_ms / 1000, 0.0) if appended_ms and appended_ms > 0 else 0.0
            latency_ms = latency * 1000
            version, variant = serving.version, serving.variant
            predictions.append((record.key or event.entity.encode(), prediction(
                event_id=event.event_id, entity=event.entity, event_time=event.event_time, score=score,
                threshold=threshold, model_name=model_name, model_version=version, variant=variant,
                feature_view=view, feature_view_version=view_version, latency_ms=latency_ms)))
            pending.append((event.event_id, encode(_Pending(
                event.event_id, event.entity, event.event_time, score, version, variant, now, latency_ms, model_ms,
                row, None if shadow is None else shadow[i]))))
            feast_row = {entity_field: event.entity, "event_timestamp": event.event_time}
            feast_row.update(row)
            feast_rows.append(feast_row)
            latencies.append(latency)


class _Pending(msgspec.Struct, omit_defaults=True):
    """A prediction waiting for its outcome (internal `…-pending` topic, read by streams/join.py)."""

    event_id: str
    entity: str
    event_time: float
    score: float
    model_version: int
    variant: str
    predicted_at: float
    latency_ms: float
    model_ms: float
    row: dict[str, Any]
    shadow: dict[str, Any] | None = None  # the challenger's score, in shadow mode
