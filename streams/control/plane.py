"""The control plane's decisions, fed by the Faust agents in streams/control/app.py.

`ControlPlane` owns the drift monitors, the trigger policy and the promotion controller, and turns
what the agents hand it (observation batches, labeled records, audit records, a 1 s tick) into
outputs: ("drift", report), ("audit", decision), ("retrain", request). It is called from a single
thread, so its state needs no locks; the registry calls and Evidently evaluations it makes block that
thread, never Faust's event loop.

What happens when:
- tick: read the registry aliases. A new champion gets a fresh data-drift monitor over its reference
  sample (saved with the version in MLflow, read only once the version's signature verifies) and resets
  the trigger policy. A champion that fails verification is audited `model_refused` once and not tried
  again for a while (models/trusted.py): the monitor stays on the champion it had or, at start-up, goes
  to the version the workers serve instead (`previous`, then the newest that verifies). The promotion
  controller sees challengers come and go and audits alias moves it did not make (the MLflow UI, the CLI).
  The registry being unreachable only delays this: scoring and the monitors go on.
- observations: rows go into the data-drift window, counts into the quality window; an evaluation
  runs when the first span of `drift.evaluate_every` (rows, or event time) is reached.
- labeled: the concept-drift detectors and the canary trial see every outcome; a concept detection
  on the champion is evaluated at once rather than at the next window, since that is the signal the
  loop must act on fastest.
- audit: a retrain worker's final record for a request ends the "in flight" state of the policy, when it
  is signed (streams/contracts.py); one that is not is ignored and audited `request_refused`.
- warm-up: while the champion is the placeholder of an ONNX pipeline (tag `driftloop.placeholder`, covered
  by the version's signature, see models/bootstrap.py), labelled events whose event time is past the data
  monitor's window warm-up are counted, and every evaluation hands the count (and the event time they
  span) to the policy, which asks for the first real model once `model.warmup` is reached.

Time. The policies (cooldown, schedule, warm-up, evaluation spans) run on event time: `event_time()`, the
newest event time in the observations and labeled records seen, so a replay at any rate decides as the
stream would have. `clock` (wall time live, the virtual clock in a backtest) stamps records and paces
the registry: polling MLflow and retrying a failed alias move are about the server, not the stream.

The topics are read as untrusted input: a record that does not have the shape its topic's contract
gives (anyone may produce to `labeled` or the observations topic) is logged and skipped, counted in
`unreadable`; a labeled event id seen again (a join re-emitted after a worker restart) counts once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from driftloop.models.provenance import ModelRefused
from driftloop.models.registry import VerifiedReference
from driftloop.models.registry import aliases as registry_aliases
from driftloop.models.trusted import TrustedVersions, refusal_record
from driftloop.signing import SigningKey, configured_key
from driftloop.spec import PipelineSpec
from driftloop.streams import contracts
from driftloop.streams.control.drift.concept import ConceptDriftMonitor
from driftloop.streams.control.drift.data import DataDriftMonitor
from driftloop.streams.control.drift.quality import QualityMonitor
from driftloop.streams.control.drift.report import build_report, epoch
from driftloop.streams.control.promotion.controller import PromotionController
from driftloop.streams.control.trigger import TriggerPolicy, Warmup
from driftloop.streams.worker.validation import RecentIds

_LOG = logging.getLogger("driftloop.streams.control.plane")
Output = tuple[str, bytes]  # ("drift" | "audit" | "retrain", record)


class _Observation(msgspec.Struct):
    """The shape of an observation record (streams/contracts.py `observation`), checked before use."""

    valid: int
    rows: dict[str, list[Any]]
    event_time_max: float | None = None
    dlq: dict[str, int] = {}
    unseen: dict[str, int] = {}
    missing: dict[str, int] = {}


class _Labeled(msgspec.Struct):
    """The fields of a `labeled` record the monitors and the canary trial read, checked before use."""

    event_id: str
    event_time: datetime
    predicted_at: datetime
    label: int
    decision: int
    score: float
    model_version: int
    variant: str


_check_observation = msgspec.json.Decoder(_Observation).decode
_check_labeled = msgspec.json.Decoder(_Labeled).decode
RETRAIN_FINISHED = ("challenger_set", "rejected", "retrain_failed", "promoted")  # promoted: a warm-up


class ControlPlane:
    def __init__(
        self,
        spec: PipelineSpec,
        tracking_uri: str,
        *,
        key: SigningKey | None = None,
        audit_topic: str = "audit",
        clock: Callable[[], float] = time.time,
    ):
        self.spec = spec
        self.tracking_uri = tracking_uri
        self.key = key or configured_key()
        self.audit_topic = audit_topic  # signatures of the audit records it acts on cover the topic name
        self.trusted = TrustedVersions(spec.model.name, tracking_uri, self.key)
        self.clock = clock
        self.latest_event_time: float | None = None  # the newest event time observed: the policies' clock
        self.policy = TriggerPolicy(spec, clock=clock, event_clock=self.event_time)
        self.promotion = PromotionController(spec, tracking_uri, clock=clock)
        self.concept = ConceptDriftMonitor(spec)
        self.quality = QualityMonitor(spec)
        self.data: DataDriftMonitor | None = None  # for the current champion, once its reference is loaded
        self.champion: int | None = None
        self.warmup_rows: int | None = None  # labelled events with full windows, while the champion is a placeholder
        self.warmup_latest: float | None = None  # the newest event time among them
        self.detections: list[dict[str, Any]] = []  # concept detections since the last report
        self.evaluations = 0
        self.registry_error: str | None = None
        self.unreadable = 0  # records skipped because they are not what their topic carries
        self._labeled_ids = RecentIds(200_000)

    def event_time(self) -> float:
        """The newest event time observed (epoch s); 0 before any."""
        return self.latest_event_time or 0.0

    def _saw(self, event_time: float | None) -> None:
        if event_time is not None and (self.latest_event_time is None or event_time > self.latest_event_time):
            self.latest_event_time = event_time

    # -- what the agents call -----------------------------------------------------------------------

    def on_tick(self) -> list[Output]:
        out: list[Output] = []
        try:
            current = registry_aliases(self.spec.model.name, tracking_uri=self.tracking_uri)
            if self.registry_error:
                _LOG.info("model registry reachable again")
            self.registry_error = None
        except Exception as exc:  # MLflow down: keep judging with what is loaded
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if message != self.registry_error:
                _LOG.warning("model registry unreachable (%s); drift monitoring goes on", message)
            self.registry_error = message
            return out
        out += [("audit", record) for record in self.promotion.observe_aliases(current)]
        champion = current.get("champion")
        if champion is not None and champion != self.champion:
            out += self._new_champion(champion, current)
        if self.data is not None and self.data.due():
            out += self._evaluate()
        return out

    def on_observations(self, values: list[bytes]) -> list[Output]:
        for value in values:
            observation = self._readable(value, _check_observation, "observation")
            if observation is None:
                continue
            self.quality.add(observation)
            self._saw(observation.get("event_time_max"))
            if self.data is not None and observation.get("valid"):
                self.data.add(observation["rows"], observation["event_time_max"])
        if self.data is not None and self.data.due():
            return self._evaluate()
        return []

    def on_labeled(self, values: list[bytes]) -> list[Output]:
        out: list[Output] = []
        champion_detected = False
        for value in values:
            record = self._readable(value, _check_labeled, "labeled record")
            if record is None or self._labeled_ids.seen_before(record["event_id"]):
                continue
            event_time = epoch(record["event_time"])
            self._saw(event_time)
            if self.warmup_rows is not None and self._windows_full(event_time):
                self.warmup_rows += 1
                self.warmup_latest = max(event_time, self.warmup_latest or event_time)
            detection = self.concept.update(record)
            if detection is not None:
                # which outcome tipped it: how many events after the onset the loop noticed
                detection["detected_on"] = {"event_id": record["event_id"], "event_time": record["event_time"]}
                self.detections.append(detection)
                champion_detected |= detection["version"] == self.champion
            out += [("audit", audit) for audit in self.promotion.update(record)]
        if champion_detected:
            out += self._evaluate()
        return out

    def on_audit(self, records: list[tuple[bytes, Any]]) -> list[Output]:
        """(value, Kafka headers) of audit records; acts on the retrain worker's signed final words."""
        out: list[Output] = []
        for value, headers in records:
            try:
                record = json.loads(value)
            except ValueError:
                continue  # not a decision of anyone's: nothing here acts on it
            if (
                not isinstance(record, dict)
                or record.get("actor") != "retrain"
                or record.get("action") not in RETRAIN_FINISHED
            ):
                continue
            if not contracts.signed_by(self.key, self.audit_topic, value, headers):
                out.append(("audit", self._request_refused(record)))
                continue
            self.policy.retrain_finished(record.get("version"), record["action"])
            if record["action"] == "promoted":  # the warm-up is over: no second one before the tick sees v2
                self.warmup_rows = None
        return out

    def state(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "evaluations": self.evaluations,
            "trigger": self.policy.state(),
            "promotion": self.promotion.state(),
            "registry_error": self.registry_error,
        }

    # -- internals ----------------------------------------------------------------------------------

    def _readable(self, value: bytes | None, check: Callable[[bytes], Any], what: str) -> dict[str, Any] | None:
        """The record as a dict when it has its contract's shape; else None (logged and counted)."""
        try:
            check(value or b"")
            return json.loads(value or b"")
        except (msgspec.DecodeError, ValueError) as exc:
            self.unreadable += 1
            _LOG.warning("skipping a record that is not a valid %s: %s", what, str(exc)[:200])
            return None

    def _windows_full(self, event_time: float) -> bool:
        full_from = self.data.warm_from if self.data is not None else None
        return full_from is not None and event_time >= full_from

    def _new_champion(self, version: int, aliases: dict[str, int]) -> list[Output]:
        out: list[Output] = []
        try:
            verified = self._trusted_reference(version, aliases, out)
        except Exception as exc:  # an unreachable registry: keep the previous monitor, try on the next tick
            _LOG.warning(
                "champion v%d: cannot read its reference sample (%s); data drift stays on v%s",
                version,
                exc,
                self.champion,
            )
            return out
        if verified is None:
            return out
        version, reference = verified.version, verified.reference
        _LOG.info("champion is v%d: data drift against its %d-row reference sample", version, len(reference))
        self.data = DataDriftMonitor(self.spec, reference, version)
        self.champion = version
        self.warmup_rows = 0 if verified.placeholder else None
        self.warmup_latest = None
        self.policy.reset_for(version)
        self.detections = [d for d in self.detections if d["version"] == version]
        return out

    def _trusted_reference(self, version: int, aliases: dict[str, int], out: list[Output]) -> VerifiedReference | None:
        """The champion's verified reference sample. When the champion is refused (audited into `out`): None
        while a champion is watched already (the workers keep serving it too), else that of the version the
        workers fall back to."""
        try:
            return self.trusted.reference(version)
        except ModelRefused as refusal:
            out += self._refused(refusal)
        if self.champion is not None:
            return None
        verified, others = self.trusted.fallback(aliases, self.trusted.reference)
        for other in others:
            out += self._refused(other)
        if verified is not None:
            _LOG.warning(
                "champion v%d is refused: watching v%d instead, which the workers serve", version, verified.version
            )
        return verified

    def _refused(self, refusal: ModelRefused) -> list[Output]:
        if not refusal.news:
            return []
        _LOG.warning("%s (data drift stays on v%s)", refusal, self.champion)
        return [("audit", refusal_record("control", refusal, self.champion))]

    def _request_refused(self, record: dict[str, Any]) -> bytes:
        details = record["details"] if isinstance(record.get("details"), dict) else {}
        version = record.get("version") if isinstance(record.get("version"), int) else None
        what = f"{record['action']!r} record for request {str(details.get('request_id'))[:100]!r}"
        _LOG.warning("ignored an audit %s: it has no valid signature", what)
        return contracts.audit(
            actor="control",
            action="request_refused",
            model_name=self.spec.model.name,
            reason=f"ignored a forged or unsigned audit {what}: it has no valid signature",
            version=version,
            details={"topic": self.audit_topic, "actor": record["actor"], "action": record["action"]},
            at=self.clock(),
        )

    def _evaluate(self) -> list[Output]:
        self.evaluations += 1
        data = self.data.evaluate() if self.data is not None and self.data.ready() else None
        report = build_report(
            self.spec,
            champion_version=self.champion,
            evaluation=self.evaluations,
            data=data,
            window=self.data.window_info() if self.data is not None else None,
            detections=self.detections,
            quality=self.quality.evaluate(),
            at=self.clock(),
        )
        self.detections = []
        warmup = (
            None
            if self.warmup_rows is None or self.data is None
            else Warmup(self.warmup_rows, self.data.warm_from, self.warmup_latest)
        )
        decision = self.policy.decide(report, self.data.current_rows() if self.data is not None else None, warmup)
        out: list[Output] = [("drift", json.dumps(report, separators=(",", ":"), default=str).encode())]
        if decision.noteworthy:
            out.append(("audit", decision.audit))
            _LOG.info("trigger: %s", decision.sentence)
        if decision.request is not None:
            out.append(("retrain", decision.request))
        return out
