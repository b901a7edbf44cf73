"""The scoring hot path for one batch of event records: validate, window features, route, score.

No Kafka I/O happens here. `streams/worker/loop.py` hands a batch of consumed records to
`EventScorer.process` and produces what comes back, so the path is testable and benchmarkable
in-process, and every stage is timed per batch (the `driftloop_stage_seconds` histogram).

Per event record, in order:
- `ingest`: `EventValidator` (spec rules) and the per-partition duplicate-id filter. A rejected record
  becomes a DLQ envelope with its original bytes, source coordinates and reason.
- `features`: the entity's window state is read from the entity-state table (changelog-backed,
  partition = the record's partition), updated by `FeatureComputer`, and written back. The row the
  model scores is the features plus the event fields the model reads, in `spec.model_inputs` order
  (`features.rows.RowBuilder`, which the offline featuriser uses too); that same row goes to Feast,
  so Feast serves exactly the vector that scored the event.
- `score`: the router names each event's variant (champion, or canary for a stable hash share of
  events or entities, `canary.assign`); each variant's rows are scored in one `predict_proba` call. In
  shadow mode the challenger also scores every row; its score rides along to the outcome join and is never served.
  A version whose circuit breaker (streams/worker/breaker.py) is open scores none of its events, or only
  a probe when half-open: the router's fallback serves the others, as variant `fallback`, journaled like
  any other. With a fallback, an event the model cannot score is served by the fallback too (and
  dead-lettered as `scoring_failed` only when the fallback cannot score it either).
- the outputs: one prediction per valid event, one pending-join record (prediction + row) keyed by
  event id for the outcome join, the Feast rows, the batch's rows for the drift agent, and one
  journal entry per record (streams/state/journal.py) that the pipeline makes durable before the rest.

One record never fails the batch: a record whose features cannot be computed is dead-lettered as
`processing_failed`; when a model's batch call raises, the batch is bisected down to the records that
make it raise (or score NaN), which are dead-lettered as `scoring_failed`.

Records processed again after a restart (streams/state/checkpoint.py proves each case):
- the entity's restored state already holds the record (its offset <= the state's `o`): its outputs
  were delivered before that state was written, so it is skipped (`ScoredBatch.skipped`);
- the journal has an entry for it: the outputs are rebuilt from the entry, byte for byte those of
  the first pass, and the event is applied to the windows (which do not hold it yet);
- otherwise it never had an output and is processed like any other.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from driftloop.features.rows import RowBuilder
from driftloop.features.windows import FeatureComputer
from driftloop.spec import PipelineSpec
from driftloop.streams import contracts
from driftloop.streams.state.journal import DEAD_LETTERED, PREDICTED
from driftloop.streams.worker.breaker import Breakers, Change
from driftloop.streams.worker.validation import Event, EventValidator, RecentIds, Rejection, reject_duplicate

_LOG = logging.getLogger("driftloop.streams.worker.scoring")
_encode = msgspec.json.Encoder().encode


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
    sources: list[Record] = field(default_factory=list)  # the input record of each prediction
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)  # (DLQ key, envelope)
    pending: list[tuple[str, bytes]] = field(default_factory=list)  # (event id, pending-join JSON)
    feast_rows: list[dict[str, Any]] = field(default_factory=list)
    journal: dict[int, list[list[Any]]] = field(default_factory=dict)  # partition -> entries of new records
    dlq_reasons: Counter = field(default_factory=Counter)
    unseen: Counter = field(default_factory=Counter)  # category field -> values mapped to the unseen bucket
    missing: Counter = field(default_factory=Counter)  # optional field -> absent values
    served: Counter = field(default_factory=Counter)  # (model version, variant) -> predictions
    latencies: list[float] = field(default_factory=list)  # seconds from Kafka timestamp to scored, per prediction
    rows: list[dict[str, Any]] = field(default_factory=list)  # the model-input row of each newly scored event
    event_time_max: float | None = None
    replayed: int = 0  # records answered from the journal
    refused: int = 0  # predictions the producer refused (dead-lettered by the pipeline instead)
    skipped: int = 0  # records whose outputs were delivered before the restored state was written
    stage_seconds: dict[str, float] = field(default_factory=dict)
    breaker_changes: list[Change] = field(default_factory=list)  # breakers opened or closed by this batch

    def journal_entry(self, record: Record, entry: list[Any]) -> None:
        self.journal.setdefault(record.partition, []).append(entry)


class EventScorer:
    """Turns batches of event records into predictions, DLQ records, pending joins and Feast rows."""

    def __init__(
        self,
        spec: PipelineSpec,
        states,
        router,
        *,
        feature_view: str,
        feature_view_version: str,
        journal=None,
        validator: EventValidator | None = None,
        recent_ids_capacity: int = 200_000,
        clock: Callable[[], float] = time.time,
        breakers: Breakers | None = None,
        breaker_clock: Callable[[], float] = time.monotonic,
    ):
        self.spec = spec
        self.states = states  # ChangelogTable: partition -> entity -> {"w": window state, "o": last offset}
        self.router = router
        self.journal = journal  # OutputJournal: entries of records decided before a restart
        self.validator = validator or EventValidator(spec)
        self.computer = FeatureComputer(spec)
        self.feature_view = feature_view
        self.feature_view_version = feature_view_version
        self._recent: dict[int, RecentIds] = {}
        self._recent_capacity = recent_ids_capacity
        self.rows = RowBuilder(spec)
        self._entity_field = spec.events.entity
        self.clock = clock  # stamps predicted_at; an event-time backtest passes its virtual clock
        self.breakers = breakers  # None: no fallback is configured, every version serves whatever happens
        self.breaker_clock = breaker_clock  # how long a breaker stays open is measured in wall time

    def forget(self, partitions: list[int]) -> None:
        """Partitions moved to another worker: drop their duplicate filters."""
        for p in partitions:
            self._recent.pop(p, None)

    def process(self, records: list[Record]) -> ScoredBatch:
        out = ScoredBatch()
        t0 = time.perf_counter()
        events = self._ingest(records, out)
        t1 = time.perf_counter()
        events, rows = self._features(events, out)
        t2 = time.perf_counter()
        events, rows, scores = self._score(events, rows, out)
        shadow = self._shadow_scores(rows)
        t3 = time.perf_counter()
        self._emit(events, rows, scores, shadow, out)
        for entries in out.journal.values():
            entries.sort(key=_offset)  # stages add them out of order; a chunk covers an offset range
        out.stage_seconds = {"ingest": t1 - t0, "features": t2 - t1, "score": t3 - t2}
        return out

    def _ingest(self, records: list[Record], out: ScoredBatch) -> list[tuple[Record, Event]]:
        results = self.validator.validate_batch([r.value for r in records])
        journal = self.journal
        events = []
        for record, result in zip(records, results):
            if journal is not None:
                entry = journal.entry(record.partition, record.offset)
                if entry is not None:
                    self._replay(record, entry, result, out)
                    continue
            if isinstance(result, Event):
                state = self.states.get(record.partition, result.entity)
                if state is not None and record.offset <= state["o"]:
                    out.skipped += 1
                    self._recent_ids(record.partition).seen_before(result.event_id)
                    continue
                if self._recent_ids(record.partition).seen_before(result.event_id):
                    result = reject_duplicate(result)
            if isinstance(result, Rejection):
                self._dead_letter(record, result.reason, result.detail, result.field, out)
                continue
            events.append((record, result))
            for name in result.unseen:
                out.unseen[name] += 1
            for name in result.missing:
                out.missing[name] += 1
        return events

    def _recent_ids(self, partition: int) -> RecentIds:
        recent = self._recent.get(partition)
        if recent is None:
            recent = self._recent[partition] = RecentIds(self._recent_capacity)
        return recent

    def _replay(self, record: Record, entry: list[Any], result: Event | Rejection, out: ScoredBatch) -> None:
        """Answer a record decided before a restart from its journal entry (see the module docstring)."""
        out.replayed += 1
        if entry[1] == DEAD_LETTERED:
            _offset, _kind, reason, field_name, detail = entry
            self._dead_letter(record, reason, detail, field_name, out, journaled=True)
            return
        pending_json = entry[2]
        pending = decode_pending(pending_json)
        self._recent_ids(record.partition).seen_before(pending.event_id)
        state = self.states.get_for_update(record.partition, pending.entity)
        if isinstance(result, Event) and (state is None or state["o"] < record.offset):
            if state is None:
                state = {"w": None, "o": -1}
            state["w"], _ = self.computer.update(state["w"], result.event_time, result.values)
            state["o"] = record.offset
            self.states.set(record.partition, pending.entity, state)
        out.predictions.append((pending.entity.encode(), self._prediction(pending)))
        out.sources.append(record)
        out.pending.append((pending.event_id, pending_json))
        out.feast_rows.append(self._feast_row(pending.entity, pending.event_time, dict(pending.row)))
        out.served[(pending.model_version, pending.variant)] += 1

    def _dead_letter(
        self,
        record: Record,
        reason: str,
        detail: str,
        field_name: str | None,
        out: ScoredBatch,
        *,
        journaled: bool = False,
    ) -> None:
        source = contracts.Source(record.topic, record.partition, record.offset, record.timestamp_ms, record.key)
        envelope = contracts.dead_letter(record.value, source, reason, detail, field_name)
        out.dead_letters.append((contracts.dead_letter_key(record.key), envelope))
        out.dlq_reasons[reason] += 1
        if not journaled:
            out.journal_entry(record, [record.offset, DEAD_LETTERED, reason, field_name, detail])

    def _features(
        self, events: list[tuple[Record, Event]], out: ScoredBatch
    ) -> tuple[list[tuple[Record, Event]], list[dict[str, Any]]]:
        update, row = self.computer.update, self.rows.row
        get, put = self.states.get_for_update, self.states.set
        kept, rows = [], []
        for record, event in events:
            entry = get(record.partition, event.entity)
            if entry is None:
                entry = {"w": None, "o": -1}
            try:
                entry["w"], feats = update(entry["w"], event.event_time, event.values)
            except Exception as exc:  # a defect, not bad input: the entity's state cannot be trusted now
                _LOG.exception(
                    "features of event %r (entity %r) failed; its window state is reset", event.event_id, event.entity
                )
                self.states.delete(record.partition, event.entity)
                self._dead_letter(record, "processing_failed", _error(exc), None, out)
                continue
            entry["o"] = record.offset
            put(record.partition, event.entity, entry)  # marks the key for the next changelog flush
            rows.append(row(feats, event.values))
            kept.append((record, event))
        return kept, rows

    def _score(self, events: list[tuple[Record, Event]], rows: list[dict[str, Any]], out: ScoredBatch):
        """(events, rows, [(score, serving model, model ms)]) of the events scored; one predict_proba call
        per variant in the batch, bisected around records that make it fail (those are dead-lettered)."""
        by_variant: dict[str, list[int]] = {}
        route = self.router.variant_for
        for i, (_, event) in enumerate(events):
            by_variant.setdefault(route(event.entity, event.event_id), []).append(i)
        scored: list[tuple[float, Any, float] | None] = [None] * len(events)
        breakers = self.breakers
        fallback = self.router.fallback if breakers is not None else None
        now = self.breaker_clock()
        for variant, indices in by_variant.items():
            serving = self.router.serving(variant)
            breaker = None
            if breakers is not None and fallback is not None and fallback.version != serving.version:
                breaker = breakers.of(serving.version)
            admitted = indices if breaker is None else indices[: breaker.admits(len(indices), now)]
            to_fallback = indices[len(admitted) :]
            if admitted:
                failed, seconds = self._score_with(
                    serving, admitted, events, rows, scored, out, dead_letter=breaker is None
                )
                if breaker is not None:
                    change = breaker.record(len(admitted), len(failed), seconds, now, failed[0][1] if failed else None)
                    if change is not None:
                        out.breaker_changes.append(change)
                    to_fallback += [i for i, _error in failed]  # dead-lettered only if the fallback fails them too
            if to_fallback:
                self._score_with(fallback, to_fallback, events, rows, scored, out, dead_letter=True)
        if all(s is not None for s in scored):
            return events, rows, scored
        ok = [i for i, s in enumerate(scored) if s is not None]
        return [events[i] for i in ok], [rows[i] for i in ok], [scored[i] for i in ok]

    def _score_with(
        self, serving, indices, events, rows, scored, out, *, dead_letter: bool
    ) -> tuple[list[tuple[int, str]], float]:
        """Score events[indices] with one model call, into `scored`; returns (index, error) of the events it
        could not score (dead-lettered when `dead_letter`) and the call's seconds."""
        started = time.perf_counter()
        probabilities = _predict(serving.model, [rows[i] for i in indices])
        seconds = time.perf_counter() - started
        # the model's own time per event (its batch call shared out), for the canary latency guardrail
        model_ms = seconds * 1000 / len(indices)
        failed, served = [], 0
        for i, p in zip(indices, probabilities):
            if isinstance(p, str):
                failed.append((i, p))
                if dead_letter:
                    detail = f"model v{serving.version} ({serving.variant}): {p}"
                    self._dead_letter(events[i][0], "scoring_failed", detail, None, out)
            else:
                scored[i] = (p, serving, model_ms)
                served += 1
        out.served[(serving.version, serving.variant)] += served
        return failed, seconds

    def _shadow_scores(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """In shadow mode: {"model_version", "score"} of the challenger for every row, else None."""
        shadow = self.router.variants.get("shadow")
        if shadow is None or not rows:
            return None
        started = time.perf_counter()
        probabilities = _predict(shadow.model, rows)
        model_ms = (time.perf_counter() - started) * 1000 / len(rows)
        # a challenger that cannot score a row does not stop the champion from serving it
        return [
            {"model_version": shadow.version, "score": None if type(p) is str else p, "model_ms": model_ms}
            for p in probabilities
        ]

    def _emit(
        self,
        events: list[tuple[Record, Event]],
        rows: list[dict[str, Any]],
        scores: list[tuple[float, Any, float]],
        shadow: list[dict[str, Any]] | None,
        out: ScoredBatch,
    ) -> None:
        spec = self.spec
        threshold, model_name = spec.model.threshold, spec.model.name
        view, view_version, entity_field = self.feature_view, self.feature_view_version, self._entity_field
        prediction, encode = contracts.prediction, _encode
        predictions, pending, feast_rows, latencies = out.predictions, out.pending, out.feast_rows, out.latencies
        sources = out.sources
        now = self.clock()
        out.rows = rows
        if events:
            out.event_time_max = max(event.event_time for _, event in events)
        for i, ((record, event), row, (score, serving, model_ms)) in enumerate(zip(events, rows, scores)):
            appended_ms = record.timestamp_ms  # librdkafka reports -1 when a record carries no timestamp
            latency = max(now - appended_ms / 1000, 0.0) if appended_ms and appended_ms > 0 else 0.0
            latency_ms = latency * 1000
            version, variant = serving.version, serving.variant
            predictions.append(
                (
                    event.entity.encode(),
                    prediction(
                        event_id=event.event_id,
                        entity=event.entity,
                        event_time=event.event_time,
                        score=score,
                        threshold=threshold,
                        model_name=model_name,
                        model_version=version,
                        variant=variant,
                        feature_view=view,
                        feature_view_version=view_version,
                        latency_ms=latency_ms,
                    ),
                )
            )
            sources.append(record)
            pending_json = encode(
                _Pending(
                    event.event_id,
                    event.entity,
                    event.event_time,
                    score,
                    version,
                    variant,
                    now,
                    latency_ms,
                    model_ms,
                    row,
                    None if shadow is None else shadow[i],
                )
            )
            pending.append((event.event_id, pending_json))
            out.journal_entry(record, [record.offset, PREDICTED, pending_json])
            feast_row = {entity_field: event.entity, "event_timestamp": event.event_time}
            feast_row.update(row)
            feast_rows.append(feast_row)
            latencies.append(latency)

    def _prediction(self, pending: _Pending) -> bytes:
        return contracts.prediction(
            event_id=pending.event_id,
            entity=pending.entity,
            event_time=pending.event_time,
            score=pending.score,
            threshold=self.spec.model.threshold,
            model_name=self.spec.model.name,
            model_version=pending.model_version,
            variant=pending.variant,
            feature_view=self.feature_view,
            feature_view_version=self.feature_view_version,
            latency_ms=pending.latency_ms,
        )

    def _feast_row(self, entity: str, event_time: float, row: dict[str, Any]) -> dict[str, Any]:
        feast_row = {self._entity_field: entity, "event_timestamp": event_time}
        feast_row.update(row)
        return feast_row


def _predict(model, rows: list[dict[str, Any]]) -> list[float | str]:
    """P(label=1) per row, or the error (a str) for each row the model cannot score: a batch whose call
    raises is split in halves until the rows that make it raise stand alone. NaN/inf count as errors."""
    try:
        probabilities = model.predict_proba(rows).tolist()
    except Exception as exc:  # the model's defect or an input it cannot take: find the rows, keep the rest
        if len(rows) == 1:
            return [_error(exc)]
        half = len(rows) // 2
        return _predict(model, rows[:half]) + _predict(model, rows[half:])
    return [p if p == p and p not in (_INF, -_INF) else "the model returned a non-finite score" for p in probabilities]


_INF = float("inf")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _offset(entry: list[Any]) -> int:
    return entry[0]


class _Pending(msgspec.Struct, omit_defaults=True):
    """A prediction waiting for its outcome (internal `…-pending` topic, read by streams/worker/join.py)."""

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


decode_pending = msgspec.json.Decoder(_Pending).decode
