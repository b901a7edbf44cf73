"""The backtest loop: every event through the live pipeline's decision code, in one process, in event time.

Per event, in order (the live component that does the same in brackets):
1. the virtual clock moves to the event's time; outcomes due by event time (`label_delay_seconds`) are joined;
2. `EventScorer.process` validates it, updates its entity's windows and scores it with the variant the
   `ModelRouter` picks [worker, streams/worker/loop.py]; the never-retrained and static baselines score the
   same feature row;
3. outcomes due by event count (`label_delay_events` after their event) are joined by the `OutcomeJoiner`
   [worker]; each labeled record teaches the serving online models (`ModelRouter.learn`) [learner] and goes to
   `ControlPlane.on_labeled` (concept drift, canary trial) [control plane];
4. every `tick_events` events, the rows scored since the last tick go to `ControlPlane.on_observations` as one
   observation (data and quality drift) and `ControlPlane.on_tick` reads the aliases [control plane];
5. a retrain request is carried out once the clock has passed its time plus `retrain_cost`, on the labeled
   rows the backtest held when it was made (`retrain.decision`, as the retrain worker) [retrain worker].

Every output of the control plane is routed in-process: audit records (signed, as on the topic) are fed back to
`on_audit`, which is how the trigger policy learns a retraining finished, and collected as the decisions; retrain
requests go to the retrainer; drift reports mark detections. After every alias move (a challenger set, a
promotion or rollback) the router reads the registry at once, where the live worker would within its poll.

Online learning keeps the live rule (`ModelRouter.learn`: a version learns the rows joined after it was
registered), which compares join times with MLflow's registration times: the backtest stamps joins with the
wall clock for that one comparison, which orders them exactly as it processes them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from tqdm import tqdm

from driftloop.features.feast.repo import feature_view_name, feature_view_version
from driftloop.load.backtest.clock import VirtualClock
from driftloop.load.backtest.source import Source, event_time
from driftloop.models.bootstrap import CHAMPION, ensure_champion
from driftloop.models.flavors import Model
from driftloop.models.registry import aliases
from driftloop.models.routing import ModelRouter
from driftloop.models.trusted import TrustedVersions
from driftloop.retrain.decision import conclude, train_and_decide
from driftloop.retrain.training_set import LabeledRow, NotEnoughData, recorded_training_set
from driftloop.signing import SigningKey
from driftloop.spec import PipelineSpec
from driftloop.streams import contracts
from driftloop.streams.control.drift.report import epoch
from driftloop.streams.control.plane import ControlPlane, Output
from driftloop.streams.worker.join import JoinResult, Outcome, OutcomeJoiner
from driftloop.streams.worker.scoring import EventScorer, Record, decode_pending

_LOG = logging.getLogger("driftloop.load.backtest")
AUDIT_TOPIC = "audit"  # the signatures of audit records cover a topic name, as live
_encode = msgspec.json.Encoder().encode


class MemoryTable:
    """The scorer's entity states and the joiner's waiting entries, in memory, in one partition: a backtest has
    nothing to recover after a crash, so it needs neither the changelog nor the local store of the live tables."""

    assigned = frozenset({0})

    def __init__(self, kind_of: Callable[[Any], str] | None = None):
        self._values: dict[str, Any] = {}
        self._kind_of = kind_of

    def get(self, partition: int, key: str) -> Any:
        return self._values.get(key)

    get_for_update = get

    def set(self, partition: int, key: str, value: Any) -> None:
        self._values[key] = value

    def delete(self, partition: int, key: str) -> None:
        self._values.pop(key, None)

    def counts(self, partition: int) -> Counter:
        return Counter(self._kind_of(v) if self._kind_of else "" for v in self._values.values())


@dataclass(frozen=True)
class Options:
    label_delay_events: int = 1  # an outcome arrives after this many later events were scored
    label_delay_seconds: float | None = None  # or this much event time after its event (instead)
    retrain_cost: float = 0.0  # event-time seconds between a retrain request and its decision
    tick_events: int = 100  # events between observations/alias reads of the control plane
    progress: bool = True


@dataclass
class _Job:
    """A retrain request waiting for its event time (or for data)."""

    due: float  # event time at which it is carried out: its request's time + the retraining cost
    request: dict[str, Any]
    rows: int  # labeled rows joined when it was made: its training window comes from these
    started: bool = False
    waiting: bool = False  # for enough labelled rows; then the rows joined since count too


@dataclass
class Served:
    """What scored one event: the pipeline's answer and the two baselines'."""

    score: float
    version: int
    variant: str
    never_retrained: float
    static: float


@dataclass
class Run:
    """Everything the report needs, in event order."""

    source: Source
    spec: PipelineSpec
    options: Options
    served: list[Served | None]  # per event; None when the event was dead-lettered
    dead_letters: Counter = field(default_factory=Counter)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    detections: list[dict[str, Any]] = field(default_factory=list)  # drift reports that flagged drift
    reports: list[dict[str, Any]] = field(default_factory=list)  # every drift report: data and concept sections
    evaluations: int = 0
    retrainings: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class Backtest:
    def __init__(self, spec: PipelineSpec, source: Source, *, tracking_uri: str, key: SigningKey, options: Options):
        if not source.rows:
            raise ValueError("nothing to backtest: the source has no rows")
        self.spec, self.source, self.options = spec, source, options
        self.tracking_uri, self.key = tracking_uri, key
        self.clock = VirtualClock(event_time(source.rows[0]))
        started = time.perf_counter()
        initial = ensure_champion(spec, tracking_uri, key=key)
        self.router = ModelRouter(spec, tracking_uri, key=key)
        self.router.refresh()
        self.trusted = TrustedVersions(spec.model.name, tracking_uri, key)
        # the baselines start from the same registered model as the pipeline, each its own copy
        self.never_retrained: Model = self.trusted.load(initial.version).model
        self.static: Model = self.trusted.load(initial.version).model
        self.scorer = EventScorer(
            spec,
            MemoryTable(),
            self.router,
            feature_view=feature_view_name(spec),
            feature_view_version=feature_view_version(spec),
            clock=self.clock,
        )
        self.joiner = OutcomeJoiner(
            spec, MemoryTable(lambda e: "prediction" if "p" in e else "outcome"), clock=self.clock
        )
        self.plane = ControlPlane(spec, tracking_uri, key=key, audit_topic=AUDIT_TOPIC, clock=self.clock)
        self.run_ = Run(source, spec, options, [None] * len(source.rows))
        self.run_.seconds["setup"] = time.perf_counter() - started
        self.labeled: list[LabeledRow] = []  # the labeled log, in join order: retraining windows come from it
        self._features: dict[int, dict[str, Any]] = {}  # scored rows waiting for their outcome
        self._waiting: deque[int] = deque()  # event indices whose outcome has not been joined
        self._jobs: deque[_Job] = deque()
        self._retry_at = 0  # labeled rows before a request waiting for data can have enough
        self._observed: list[dict[str, Any]] = []
        self._quality: dict[str, Counter] = {"dlq": Counter(), "unseen": Counter(), "missing": Counter()}
        self._event_time_max: float | None = None
        self._index = 0
        self._moved = False  # an alias moved: the router and the control plane read the registry

    # -- the loop -----------------------------------------------------------------------------------------

    def run(self) -> Run:
        started = time.perf_counter()
        self._handle(self.plane.on_tick())
        rows, options = self.source.rows, self.options
        bar = tqdm(
            total=len(rows),
            file=sys.stderr,
            unit="ev",
            disable=not (options.progress and sys.stderr.isatty()),
            desc="backtest",
        )
        try:
            for index, row in enumerate(rows):
                self._index = index
                self.clock.advance(event_time(row))
                if options.label_delay_seconds is not None:
                    self._join_due_by_time()
                self._run_due_jobs()
                self._score(index, row)
                if options.label_delay_seconds is None:
                    while self._waiting and self._waiting[0] <= index - options.label_delay_events:
                        self._join([self._waiting.popleft()])
                if (index + 1) % options.tick_events == 0:
                    self._tick()
                    bar.update(options.tick_events)
            self._join(list(self._waiting))  # the last outcomes arrive after the stream ends
            self._waiting.clear()
            self._tick()
        finally:
            bar.close()
        self.router.stop()
        self.run_.seconds["loop"] = time.perf_counter() - started
        return self.run_

    def _score(self, index: int, row) -> None:
        key = None if row.key is None else row.key.encode()
        record = Record("events", 0, index, int(row.event_time * 1000), key, _encode(row.event))
        scored = self.scorer.process([record])
        for reason, count in scored.dlq_reasons.items():
            self.run_.dead_letters[reason] += count
            self._quality["dlq"][reason] += count
        self._quality["unseen"].update(scored.unseen)
        self._quality["missing"].update(scored.missing)
        if not scored.pending:
            return
        result = JoinResult()
        for event_id, pending_json in scored.pending:
            pending = decode_pending(pending_json)
            features = pending.row
            self.run_.served[index] = Served(
                pending.score,
                pending.model_version,
                pending.variant,
                _probability(self.never_retrained, features),
                _probability(self.static, features),
            )
            self._features[index] = features
            self.joiner.add_pending(0, event_id, pending_json, result)
        self._observed.extend(scored.rows)
        self._event_time_max = scored.event_time_max
        self._waiting.append(index)

    def _join_due_by_time(self) -> None:
        due = []
        rows, delay, now = self.source.rows, self.options.label_delay_seconds, self.clock()
        assert delay is not None  # called only for a label delay in event time
        while self._waiting and event_time(rows[self._waiting[0]]) + delay <= now:
            due.append(self._waiting.popleft())
        if due:
            self._join(due)

    def _join(self, indices: list[int]) -> None:
        if not indices:
            return
        rows, result = self.source.rows, JoinResult()
        for index in indices:
            self.joiner.add_outcome(0, Outcome(rows[index].event_id, rows[index].label, self.clock()), result)
        joined_ms = int(time.time() * 1000)
        features, labels = [], []
        for index in indices:
            served, row = self.run_.served[index], rows[index]
            assert served is not None  # only scored events wait for their label
            features.append(self._features.pop(index))
            labels.append(row.label)
            self.labeled.append(
                LabeledRow(
                    row.event_id,
                    row.key or "",
                    event_time(row),
                    row.label,
                    features[-1],
                    joined_ms,
                    served.score,
                    served.version,
                )
            )
        self.router.learn(features, labels, [joined_ms] * len(features))
        if self.never_retrained.online:
            self.never_retrained.learn(features, labels)
        self._handle(self.plane.on_labeled([value for _key, value in result.labeled]))

    def _tick(self) -> None:
        if self._observed or any(self._quality.values()):
            champion = self.router.variants.get(CHAMPION)
            observation = contracts.observation(
                worker="backtest",
                valid=len(self._observed),
                rows=self._observed,
                columns=self.spec.model_inputs,
                event_time_max=self._event_time_max,
                dlq=dict(self._quality["dlq"]),
                unseen=dict(self._quality["unseen"]),
                missing=dict(self._quality["missing"]),
                champion_version=champion.version if champion else None,
            )
            self._observed = []
            self._quality = {"dlq": Counter(), "unseen": Counter(), "missing": Counter()}
            self._handle(self.plane.on_observations([observation]))
        self._handle(self.plane.on_tick())
        self._run_due_jobs()

    # -- the control plane's outputs --------------------------------------------------------------------

    def _handle(self, outputs: list[Output]) -> None:
        for kind, value in outputs:
            if kind == "audit":
                self._audit(value)
            elif kind == "retrain":
                self._jobs.append(_Job(self.clock() + self.options.retrain_cost, json.loads(value), len(self.labeled)))
            elif kind == "drift":
                self._drift_report(value)
        while self._moved:
            self._moved = False
            for change in self.router.refresh():
                _LOG.info("event %d: serving %s", self._index, change)
            self._handle(self.plane.on_tick())

    def _audit(self, value: bytes) -> None:
        record = json.loads(value)
        self.run_.decisions.append(
            {
                "event_index": self._index,
                "event_time": contracts.iso_time(self.clock()),
                "actor": record["actor"],
                "action": record["action"],
                "version": record.get("version"),
                "reason": record["reason"],
            }
        )
        if record["actor"] in ("promotion", "operator") or record["action"] in ("challenger_set", "promoted"):
            self._moved = True
        headers = contracts.signature_headers(self.key, AUDIT_TOPIC, value)
        self._handle(self.plane.on_audit([(value, headers)]))

    def _drift_report(self, value: bytes) -> None:
        self.run_.evaluations += 1
        report = json.loads(value)
        concept = [d for d in report["concept"]["detections"] if d.get("version") == report["champion_version"]]
        self.run_.reports.append(
            {
                "event_index": self._index,
                "data": {"drifted_share": report["data"].get("drifted_share")},
                "concept": {"detections": report["concept"]["detections"]},
            }
        )
        if concept or report["data"].get("drifted"):
            self.run_.detections.append(
                {
                    "event_index": self._index,
                    "event_time": contracts.iso_time(self.clock()),
                    "concept": bool(concept),
                    "data": bool(report["data"].get("drifted")),
                }
            )

    # -- the retrainer ----------------------------------------------------------------------------------

    def _run_due_jobs(self) -> None:
        while self._jobs and self._jobs[0].due <= self.clock() and len(self.labeled) >= self._retry_at:
            if self._retrain(self._jobs[0]):
                self._jobs.popleft()
            else:
                break  # waiting for data: try again at the next tick, with the rows joined by then

    def _retrain(self, job: _Job) -> bool:
        """Carry out a request as the retrain worker does; False while it waits for enough labelled rows."""
        started = time.perf_counter()
        request = job.request
        train_from = None if request.get("train_from") is None else epoch(request["train_from"])
        if not job.started:
            job.started = True
            self._retrain_audit("started", f"retraining on {request['reason']}", request)
        try:
            # a request waiting for data sees the rows joined since, as the live worker reading `labeled` again
            data = recorded_training_set(
                self.labeled if job.waiting else self.labeled[: job.rows], self.spec, train_from
            )
        except NotEnoughData as exc:
            if not job.waiting:
                job.waiting = True
                self._retrain_audit(
                    "waiting_for_data", str(exc), request, details={"rows": exc.found, "min_rows": exc.needed}
                )
            self._retry_at = len(self.labeled) + exc.needed - exc.found
            return False
        self.run_.retrainings += 1
        current = aliases(self.spec.model.name, tracking_uri=self.tracking_uri)
        champion = self.trusted.load(current[CHAMPION]) if CHAMPION in current else None
        warmup = request["reason"] == "warmup" and champion is not None and champion.placeholder
        try:
            retrained = train_and_decide(
                self.spec,
                tracking_uri=self.tracking_uri,
                key=self.key,
                request=request,
                data=data,
                champion=champion,
                warmup=warmup,
                timings={},
                drift_html=False,
            )
            conclude(
                self.spec,
                self.tracking_uri,
                request,
                retrained,
                data,
                audit=self._retrain_audit,
                is_placeholder=lambda version: self.trusted.reference(version).placeholder,
                now=self.clock(),
                seconds=time.perf_counter() - started,
            )
        except Exception as exc:  # the request's own failure, audited like the live worker's
            _LOG.exception("request %s failed", request["request_id"])
            self._retrain_audit("retrain_failed", f"{type(exc).__name__}: {exc}", request)
        self.run_.seconds["retraining"] = self.run_.seconds.get("retraining", 0.0) + time.perf_counter() - started
        return True

    def _retrain_audit(
        self,
        action: str,
        reason: str,
        request: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        context = {} if request is None else {"request_id": request["request_id"]}
        self._audit(
            contracts.audit(
                actor="retrain",
                action=action,
                model_name=self.spec.model.name,
                reason=reason,
                version=version,
                details={**context, **(details or {})},
                at=self.clock(),
            )
        )


def _probability(model: Model, row: dict[str, Any]) -> float:
    return float(model.predict_proba([row])[0])
