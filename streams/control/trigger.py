"""The retrain trigger policy: drift report in, a decision (audited, maybe a retrain request) out.

    policy = TriggerPolicy(spec)
    decision = policy.decide(report, current_rows=data_monitor.current_rows())
    # publish decision.audit on `audit` (rate-limit those with noteworthy False), decision.request on
    # `retrain-requests` when decision.trigger; call policy.retrain_finished(...) when the retrain worker
    # audits "challenger_set" / "rejected" / "retrain_failed", and policy.reset_for(v) on a new champion.

While the champion is the warm-up placeholder of an ONNX pipeline (models/bootstrap.py), only one
thing triggers: `model.warmup` reached by the labelled events with full feature windows (a count of them,
or the event time they span; the control plane counts them and passes `warmup`); the retraining trains
the spec's own model from there (reason "warmup"). When it succeeds no cooldown follows; a failed one
waits the cooldown before the next try. Drift of the placeholder is not acted on.

Otherwise, what triggers a retraining, strongest evidence first:
1. concept drift: a concept detection (a rise of the loss) on the champion version; training starts
   at the detector's change point.
2. data drift, sustained: the data section drifted (drifted_share >= drift.drifted_share) in
   `drift.sustained_windows` consecutive evaluations; training starts at the first event time of the
   first drifted window of that run. Not while the same windows fail quality checks: drifted inputs
   with unseen categories or dead letters are a broken producer or an outdated spec, and a model
   retrained on them would learn the fault.
3. schedule: `drift.schedule_every` (input events or event time) since the last finished retraining
   (or since the first report); training on the newest window.
Quality drift alone never triggers: it is reported and audited (retraining cannot fix a schema problem).

Debounce: at most one retraining in flight per model, and `drift.cooldown` (input events, or event time)
after each finished one. A trigger blocked by either is declined, and says why; a concept detection declined that way is
not kept (the detector restarts after firing, so a lasting rise is not reported again; data drift or
the schedule catch a model that is still wrong). Data-drift runs keep counting while blocked, so
drift that outlasts the cooldown triggers as soon as it ends.

Event time, not the wall clock: every span of the policy (cooldown, schedule, warm-up) is measured in
input events observed (the reports' `quality.events_total`, so to the evaluation) or in event time, read
from `event_clock` (the control plane's newest observed event time; the backtest's virtual clock). A
replay at 200 rows/s of a daily stream then cools down after the same days of data as the stream itself.
`clock` only stamps the records and the in-flight request (whose age the metrics measure in wall time).

Every decision is an audit record (actor "trigger", action "retrain_triggered" or "retrain_declined",
reason = the decision's sentence). `noteworthy` is False when a decision only repeats the previous
one's situation (the same "no drift", the same block), so the control plane may rate-limit those.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from driftloop.spec import PipelineSpec, duration_text
from driftloop.streams import contracts
from driftloop.streams.contracts import iso_time
from driftloop.streams.control.drift.report import epoch


@dataclass(frozen=True)
class Decision:
    trigger: bool
    reason: str | None  # "warmup" | "concept_drift" | "data_drift" | "schedule" when a retraining was due
    sentence: str  # one human-readable sentence, also the audit record's reason
    train_from: float | None  # event time (epoch s) to train from; None: the newest retrain.window_events
    audit: bytes  # contracts.audit(actor="trigger", ...)
    request: bytes | None  # contracts.retrain_request(...) when trigger
    noteworthy: bool
    request_id: str | None = None
    declined: str | None = None  # "in_flight" | "cooldown" | "not_sustained" | "quality" | "no_drift" | "warming_up"


@dataclass(frozen=True)
class Warmup:
    """Where the placeholder champion's warm-up stands: labelled events since the feature windows filled."""

    rows: int
    train_from: float | None  # event time from which the windows are full; None until the first observation
    latest: float | None = None  # the newest event time among those rows


class TriggerPolicy:
    def __init__(
        self,
        spec: PipelineSpec,
        clock: Callable[[], float] = time.time,
        event_clock: Callable[[], float] | None = None,
    ):
        self.spec = spec
        self.clock = clock
        self.event_clock = event_clock or clock  # a backtest's clock is event time already
        self.champion: int | None = None
        self.consecutive = 0  # consecutive evaluations whose data section drifted
        self._run_from: float | None = None  # first event time of the current drifted run
        self.in_flight: dict[str, Any] | None = None  # {"request_id", "reason", "since"}
        self._cooldown_from: tuple[int, float] | None = None  # (events_total, event time) of the last finish
        self.last_decision: dict[str, Any] | None = None
        self.last_finished: dict[str, Any] | None = None
        self._schedule_from: tuple[int, float] | None = None  # (events_total, event time); from the first report
        self._events_total = 0
        self._previous_situation: tuple | None = None

    # -- events from the control plane ---------------------------------------------------------------

    def reset_for(self, champion_version: int) -> None:
        """A new champion: its drift history starts over (a retraining in flight or a cooldown stands)."""
        self.champion = champion_version
        self.consecutive = 0
        self._run_from = None

    def retrain_finished(self, version: int | None, outcome: str) -> None:
        """The retrain worker's final word on a request: "challenger_set", "rejected", "retrain_failed" or
        (a warm-up) "promoted"."""
        now = self.clock()
        first_model = outcome == "promoted" and self.in_flight is not None and self.in_flight["reason"] == "warmup"
        self.last_finished = {
            "at": iso_time(now),
            "outcome": outcome,
            "version": version,
            "request_id": self.in_flight["request_id"] if self.in_flight else None,
        }
        self.in_flight = None
        if first_model:  # its drift must be watched from the start, not after a cooldown (a failure waits one)
            return
        self._cooldown_from = self._schedule_from = (self._events_total, self.event_clock())

    # -- deciding ------------------------------------------------------------------------------------

    def decide(
        self, report: dict[str, Any], current_rows: dict[str, list[Any]] | None = None, warmup: Warmup | None = None
    ) -> Decision:
        """Judge one drift report (streams/control/drift/report.py); current_rows go into a retrain request; `warmup`
        while the champion is the warm-up placeholder."""
        now = self.clock()
        if report.get("champion_version") not in (None, self.champion):
            self.reset_for(report["champion_version"])  # windows judged for another champion do not count
        self._count_data_drift(report["data"], report["window"])
        self._events_total = int(report["quality"].get("events_total", self._events_total))
        if self._schedule_from is None:
            self._schedule_from = (self._events_total, self.event_clock())
        detections = [d for d in report["concept"]["detections"] if d["version"] == self.champion]
        if warmup is not None:
            reason, train_from, because, declined = self._warmup_evidence(warmup)
        else:
            reason, train_from, because, declined = self._evidence(report, detections)
        if reason is not None:
            blocked = self._blocked()
            if blocked is not None:
                declined, because = blocked[0], f"{because}; but {blocked[1]}"
        trigger = reason is not None and declined is None
        sentence = self._sentence(trigger, declined, because, train_from)
        request_id = uuid.uuid4().hex if trigger else None
        flagged = list(report["quality"].get("flagged", []))
        details = {
            "decision": "triggered" if trigger else "declined",
            "reason_code": reason,
            "declined": declined,
            "evaluation": report.get("evaluation"),
            "consecutive_drifted_windows": self.consecutive,
            "sustained_windows": self.spec.drift.sustained_windows,
            "drifted_share": report["data"].get("drifted_share"),
            "drifted_columns": report["data"].get("drifted_columns", []),
            "concept_detections": detections,
            "quality_flagged": flagged,
            "request_id": request_id,
            "train_from": iso_time(train_from) if trigger and train_from is not None else None,
            "in_flight_request": self.in_flight["request_id"] if self.in_flight else None,
            "cooldown_left": self._cooldown_left(),
        }
        audit = contracts.audit(
            actor="trigger",
            action="retrain_triggered" if trigger else "retrain_declined",
            model_name=self.spec.model.name,
            reason=sentence,
            version=self.champion,
            details=details,
            at=now,
        )
        request = None
        if trigger and request_id is not None and reason is not None:  # both are set whenever trigger is
            request = contracts.retrain_request(
                request_id=request_id,
                model_name=self.spec.model.name,
                champion_version=self.champion,
                reason=reason,
                train_from=train_from,
                drift_report=report,
                current_rows=current_rows,
                at=now,
            )
            self.in_flight = {"request_id": request_id, "reason": reason, "since": now}
            self.consecutive, self._run_from = 0, None
        situation = (declined, reason, self.consecutive if declined == "not_sustained" else None, tuple(flagged))
        noteworthy = trigger or situation != self._previous_situation
        self._previous_situation = situation
        self.last_decision = {
            "at": iso_time(now),
            "trigger": trigger,
            "reason": reason,
            "declined": declined,
            "sentence": sentence,
            "request_id": request_id,
        }
        return Decision(
            trigger, reason, sentence, train_from if trigger else None, audit, request, noteworthy, request_id, declined
        )

    def state(self) -> dict[str, Any]:
        """For `driftloop status`: what the policy is counting and waiting for."""
        return {
            "champion_version": self.champion,
            "consecutive_drifted_windows": self.consecutive,
            "sustained_windows": self.spec.drift.sustained_windows,
            "in_flight": ({**self.in_flight, "since": iso_time(self.in_flight["since"])} if self.in_flight else None),
            "cooldown_left": self._cooldown_left(),
            "last_decision": self.last_decision,
            "last_finished": self.last_finished,
        }

    # -- internals -----------------------------------------------------------------------------------

    def _evidence(
        self, report: dict[str, Any], detections: list[dict[str, Any]]
    ) -> tuple[str | None, float | None, str, str | None]:
        """(reason to retrain or None, train_from, because..., why not) by the rules in the module docstring."""
        data, quality = report["data"], report["quality"]
        sustained = self.consecutive >= self.spec.drift.sustained_windows
        if detections:
            last = detections[-1]
            return (
                "concept_drift",
                epoch(last["change_point_event_time"]),
                (
                    f"concept drift: the {last['loss'].replace('_', ' ')} rose from {last['loss_before']:.4g} to "
                    f"{last['loss_after']:.4g} ({last['detector']}, after {last['at_event']} outcomes)"
                ),
                None,
            )
        if sustained and quality.get("flagged"):
            return (
                None,
                None,
                (
                    f"data drift in {self.consecutive} consecutive windows, but the same windows fail quality checks "
                    f"({_flags(quality)}); retraining on them would learn the fault: fix the producer or the spec"
                ),
                "quality",
            )
        if sustained:
            return (
                "data_drift",
                self._run_from,
                f"data drift in {self.consecutive} consecutive windows ({_data(data)})",
                None,
            )
        scheduled = self._schedule_due()
        if scheduled is not None:
            return "schedule", None, scheduled, None
        if self.consecutive:
            return (
                None,
                None,
                (
                    f"data drift in {self.consecutive}/{self.spec.drift.sustained_windows} "
                    f"consecutive windows ({_data(data)})"
                ),
                "not_sustained",
            )
        if quality.get("flagged"):
            return (
                None,
                None,
                (
                    f"quality drift ({_flags(quality)}) is reported, not retrained: retraining cannot "
                    f"fix a schema problem; fix the producer or the spec"
                ),
                "quality",
            )
        share = data.get("drifted_share")
        seen = (
            f"drifted share {share:.3g} < {self.spec.drift.drifted_share:g}"
            if share is not None
            else f"data {data.get('status')}"
        )
        return None, None, f"no drift: {seen}, no concept detection, quality within limits", "no_drift"

    def _warmup_evidence(self, warmup: Warmup) -> tuple[str | None, float | None, str, str | None]:
        needed, flavor = self.spec.model.warmup, self.spec.model.flavor
        spanned = 0.0 if warmup.train_from is None or warmup.latest is None else warmup.latest - warmup.train_from
        if warmup.train_from is not None and warmup.rows and needed.reached(warmup.rows, spanned):
            return (
                "warmup",
                warmup.train_from,
                (
                    f"the champion is the cold-start placeholder and {warmup.rows} labelled events with full feature "
                    f"windows are in (model.warmup {needed}): training the first {flavor} model"
                ),
                None,
            )
        waiting = (
            "the feature windows are still filling"
            if warmup.train_from is None
            else f"{warmup.rows} labelled events with full feature windows, {needed.left(warmup.rows, spanned)} to go "
            f"(model.warmup {needed})"
        )
        return None, None, f"the champion is the cold-start placeholder; warming up: {waiting}", "warming_up"

    def _blocked(self) -> tuple[str, str] | None:
        """("in_flight" | "cooldown", why) when the debounce holds a retraining back."""
        if self.in_flight is not None:
            return "in_flight", (
                f"retraining request {self.in_flight['request_id']} is still in flight "
                f"(since {iso_time(self.in_flight['since'])})"
            )
        left = self._cooldown_left()
        if left is not None:
            return (
                "cooldown",
                f"cooling down after the last retraining (drift.cooldown {self.spec.drift.cooldown}): {left} left",
            )
        return None

    def _since(self, start: tuple[int, float]) -> tuple[int, float]:
        """(input events, seconds of event time) observed since `start`."""
        return self._events_total - start[0], self.event_clock() - start[1]

    def _cooldown_left(self) -> str | None:
        """What remains of the cooldown, for a sentence; None when it is over (or none began)."""
        cooldown = self.spec.drift.cooldown
        if self._cooldown_from is None or cooldown.reached(*self._since(self._cooldown_from)):
            return None
        return cooldown.left(*self._since(self._cooldown_from))

    def _sentence(self, trigger: bool, declined: str | None, because: str, train_from: float | None) -> str:
        model = f"{self.spec.model.name} v{self.champion}" if self.champion is not None else self.spec.model.name
        if trigger:
            return f"Retraining {model}: {because}" + (
                f"; training from {iso_time(train_from)}." if train_from is not None else "."
            )
        return f"Not retraining {model}{' yet' if declined == 'not_sustained' else ''}: {because}."

    def _count_data_drift(self, data: dict[str, Any], window: dict[str, Any]) -> None:
        if data.get("status") != "evaluated":
            return  # no evidence either way: the run neither grows nor breaks
        if not data.get("drifted"):
            self.consecutive, self._run_from = 0, None
            return
        self.consecutive += 1
        if self.consecutive == 1 and window.get("first_event_time"):
            self._run_from = epoch(window["first_event_time"])

    def _schedule_due(self) -> str | None:
        if self.spec.drift.schedule_every is None or self._schedule_from is None:
            return None
        events, seconds = self._since(self._schedule_from)
        for every in self.spec.drift.schedule_every:
            if every.reached(events, seconds):
                return (
                    f"scheduled every {every}, {events:,} events and {duration_text(seconds)} of event time since "
                    f"the last retraining"
                )
        return None


def _data(data: dict[str, Any]) -> str:
    columns = ", ".join(data.get("drifted_columns", [])) or "none"
    share = data.get("drifted_share")
    return (
        f"drifted share {share:.3g} >= {data.get('threshold_share', 0):g}: {columns}"
        if share is not None
        else f"data {data.get('status')}"
    )


def _flags(quality: dict[str, Any]) -> str:
    limits = quality.get("limits", {})
    return ", ".join(f"{name} {quality[name]:.3g} > {limits.get(name, 0):g}" for name in quality.get("flagged", []))
