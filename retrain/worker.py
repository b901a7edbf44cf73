"""The retraining worker: retrain requests in, MLflow-tracked and validated model versions out.

`run_retrain_worker(settings, stop, bootstrap=..., tracking_uri=...)` consumes `settings.topic_retrain_requests`
in the group `driftloop-<spec name>-retrain`, one request at a time, and for each:

1. skips it when a version registered for its request id exists (requests are at-least-once), after
   finishing that version's decision if a crash interrupted it (a passed version gets `challenger`);
2. audits `started`, reads the training window from `labeled` and joins its features from Feast
   (`training_set`); with fewer than `retrain.min_rows` rows it audits `waiting_for_data` and reads again
   every `data_retry_seconds`, failing the request after `max_data_wait_seconds`;
3. trains the candidates on the oldest part (`train`), compares them with the champion on the newest part
   and applies the gate (`validate`); the champion's figures are the scores it served live on those events
   (when it served at least half of them), so its online learning counts;
4. logs one MLflow run and registers the best candidate (`registration`), audits `registered`, then sets
   the alias `challenger` (audit `challenger_set`) or leaves it tagged `driftloop.rejected` (audit
   `rejected`). `champion` is not touched: promotion is another component's decision.

A "warmup" request (the champion is the placeholder of an ONNX pipeline, models/bootstrap.py) trains only
the spec's own model, is not compared with the placeholder, and a version that passes replaces it as
`champion` at once (the placeholder becomes `previous`; audit `promoted`): there is nothing to protect
by a canary, and the placeholder was never anyone's choice. Whether the champion is the placeholder is
read from its signed artifacts, never from the request: a "warmup" request that finds a real champion
retrains like any other.

Only signed requests are acted on (streams/contracts.py): one without a valid signature is audited
`request_refused` and committed, untouched. The champion the candidates are compared with is loaded only
once its signature verifies; a refused champion is audited `model_refused` (once per version) and the
comparison is with the version the workers serve instead (models/trusted.py).

The request's offset is committed only once the request is done: decided, or definitively failed (audit
`retrain_failed`, aliases untouched). A crash before that replays it. When MLflow does not answer, nothing
is decided: the worker logs, waits (1 s doubling up to `max_backoff_seconds`) and retries the same request.
Any other exception fails the request. While it waits, the worker keeps polling its paused consumer, so the
group does not evict it (`max.poll.interval.ms`) however long the wait.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.features.feast.offline import OfflineHistory
from driftloop.heartbeat import Heartbeat
from driftloop.models.bootstrap import CHAMPION
from driftloop.models.inputs import rows_to_frame
from driftloop.models.provenance import ModelRefused
from driftloop.models.registry import (
    LoadedModel,
    aliases,
    mlflow_problem,
    set_alias,
    set_version_tag,
    version_tags,
    versions_tagged,
)
from driftloop.models.routing import CHALLENGER
from driftloop.models.trusted import TrustedVersions, refusal_record
from driftloop.retrain.registration import GATE_TAG, REQUEST_TAG, record
from driftloop.retrain.train import train_candidates, train_spec_model
from driftloop.retrain.training_set import NotEnoughData, TrainingSet, build_training_set, read_window
from driftloop.retrain.validate import METRICS, catch_up, gate, holdout_metrics, holdout_size, score
from driftloop.schema import model_inputs
from driftloop.settings import Settings
from driftloop.signing import key_path, load_key
from driftloop.spec import PipelineSpec, load_spec
from driftloop.streams import contracts
from driftloop.streams.control.promotion import alias_moves

_LOG = logging.getLogger("driftloop.retrain.worker")
CHALLENGER_SET_TAG = "driftloop.challenger_set_at"  # when this worker pointed `challenger` at the version
ACTOR = "retrain"
# Training a large window can take minutes without a poll; waits poll (paused) and do not count.
_MAX_POLL_INTERVAL_MS = 30 * 60 * 1000


class _Stopped(Exception):
    """stop was set while a request waited: leave it uncommitted, the next worker replays it."""


class RetrainWorker:
    def __init__(
        self,
        settings: Settings,
        spec: PipelineSpec,
        stop: threading.Event,
        *,
        bootstrap: str,
        tracking_uri: str,
        data_retry_seconds: float = 5.0,
        max_data_wait_seconds: float = 900.0,
        max_backoff_seconds: float = 30.0,
    ):
        self.settings, self.spec, self.stop = settings, spec, stop
        self.bootstrap, self.tracking_uri = bootstrap, tracking_uri
        self.data_retry_seconds = data_retry_seconds
        self.max_data_wait_seconds = max_data_wait_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.group = f"driftloop-{spec.name}-retrain"
        self.key = load_key(key_path(settings))
        self.trusted = TrustedVersions(spec.model.name, tracking_uri, self.key)
        self.history = OfflineHistory(settings, spec)
        # Evidently takes seconds to import: pay that at start-up, not inside the drift-to-challenger time.
        import evidently.presets  # noqa: F401

        self.consumer: Consumer = kafka.consumer(
            bootstrap, self.group, **{"enable.auto.commit": False, "max.poll.interval.ms": _MAX_POLL_INTERVAL_MS}
        )
        self.producer = kafka.producer(bootstrap)
        self.heartbeat = Heartbeat(settings.heartbeat_file)

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        topic = self.settings.topic_retrain_requests
        self.consumer.subscribe([topic])
        _LOG.info(
            "retrain worker for model %s: consuming %s as %s; MLflow at %s",
            self.spec.model.name,
            topic,
            self.group,
            self.tracking_uri,
        )
        try:
            while not self.stop.is_set():
                self.heartbeat.beat()
                message = self.consumer.poll(0.5)
                if message is None:
                    continue
                if (error := message.error()) is not None:
                    _LOG.warning("consuming %s: %s", topic, error.str())
                    continue
                if self._process(message):
                    self._commit(message)
        finally:
            self.consumer.close()
            self.producer.flush(10)

    def _process(self, message: Message) -> bool:
        """Handle one request; True when it is done (commit it), False when stopping before that."""
        where = {"partition": message.partition(), "offset": message.offset()}
        if not contracts.signed_by(self.key, message.topic() or "", message.value(), message.headers()):
            _LOG.warning(
                "retrain request at %s[%d]@%d has no valid signature: refused",
                message.topic(),
                message.partition(),
                message.offset(),
            )
            self._audit(
                "request_refused",
                "a retrain request without a valid signature (forged, or written without the signing key) was ignored",
                details=where,
            )
            return True
        try:
            request = _parse(message.value())
        except DriftloopError as exc:
            _LOG.error(
                "retrain request at %s[%d]@%d is unusable: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                exc,
            )
            self._audit("retrain_failed", f"unusable retrain request: {exc}", details=where)
            return True
        if request["model_name"] != self.spec.model.name:
            _LOG.warning(
                "request %s is for model %r, not %r: skipped",
                request["request_id"],
                request["model_name"],
                self.spec.model.name,
            )
            return True
        backoff = 1.0
        while not self.stop.is_set():
            problem = mlflow_problem(self.tracking_uri)
            if problem is None:
                try:
                    self._retrain(request)
                    return True
                except _Stopped:
                    return False
                except Exception as exc:
                    problem = mlflow_problem(self.tracking_uri)
                    if problem is None:  # MLflow answers: the failure is the request's own
                        _LOG.exception("request %s failed", request["request_id"])
                        self._audit("retrain_failed", f"{type(exc).__name__}: {exc}", request)
                        return True
            _LOG.warning(
                "request %s: MLflow at %s is unreachable (%s); retrying in %.0fs",
                request["request_id"],
                self.tracking_uri,
                problem,
                backoff,
            )
            try:
                self._idle(backoff)
            except _Stopped:
                return False
            backoff = min(backoff * 2, self.max_backoff_seconds)
        return False

    # -- one request ----------------------------------------------------------------------------------

    def _retrain(self, request: dict[str, Any]) -> None:
        spec, name, uri = self.spec, self.spec.model.name, self.tracking_uri
        request_id = request["request_id"]
        done = versions_tagged(name, REQUEST_TAG, request_id, tracking_uri=uri)
        if done:
            self._finish(request, done[-1])
            return
        started = time.perf_counter()
        train_from = _epoch(request["train_from"])
        _LOG.info("request %s (%s, train_from %s): started", request_id, request["reason"], request["train_from"])
        self._audit("started", f"retraining on {request['reason']}", request)
        timings: dict[str, float] = {}
        data = self._training_set(request, train_from, timings)
        held = holdout_size(len(data), spec.retrain.holdout_share)
        cut = len(data) - held
        train_rows, train_labels = data.rows[:cut], data.labels[:cut]
        holdout_rows, holdout_labels = data.rows[cut:], data.labels[cut:]

        champion = self._champion()
        champion_version = None if champion is None else champion.version
        # a warm-up request that finds a real champion (one came meanwhile) retrains like any other
        warmup = request["reason"] == "warmup" and champion is not None and champion.placeholder
        candidates = (train_spec_model if warmup else train_candidates)(spec, train_rows, train_labels)
        step = time.perf_counter()
        served = [i for i, row in enumerate(data.window.rows[cut:]) if row.served_version == champion_version]
        if champion is not None and len(served) >= held // 2:
            # The champion as it really served: the scores it gave live, after all the online learning it
            # did since registration (a replay from the registered snapshot would only see this window).
            # The candidates are scored on the same events.
            holdout_rows = [holdout_rows[i] for i in served]
            holdout_labels = [holdout_labels[i] for i in served]
            results = {c.name: score(c.model, holdout_rows, holdout_labels, spec) for c in candidates}
            results["champion"] = holdout_metrics(
                [data.window.rows[cut + i].served_score for i in served], holdout_labels, spec.model.threshold
            )
        else:  # a new champion that served little of the holdout: score its registered snapshot, caught up
            results = {c.name: score(c.model, holdout_rows, holdout_labels, spec) for c in candidates}
            if champion is not None:
                catch_up(champion.model, champion.created_ms, train_rows, train_labels, data.joined_ms[:cut])
                results["champion"] = score(champion.model, holdout_rows, holdout_labels, spec)
        timings["validate_seconds"] = time.perf_counter() - step
        decision = gate(
            spec,
            {c.name: results[c.name] for c in candidates},
            None if warmup else results.get("champion"),
            champion_version,
        )
        winner = next(c for c in candidates if c.name == decision.winner)
        _LOG.info(
            "request %s: holdout of %d rows: %s; gate %s: %s",
            request_id,
            held,
            _summary(results),
            "passed" if decision.passed else "failed",
            decision.reason,
        )

        columns = model_inputs(spec)
        if champion is not None and len(champion.reference):
            drift_reference, reference_name = champion.reference, f"champion v{champion_version} reference sample"
        else:
            drift_reference, reference_name = rows_to_frame(columns, train_rows), "training rows"
        current = _columnar_rows(request.get("current_rows"))
        drift_current = rows_to_frame(columns, current or holdout_rows)
        params = {
            "window_first_event_time": contracts.iso_time(data.event_times[0]),
            "window_last_event_time": contracts.iso_time(data.event_times[-1]),
            "rows": len(data),
            "train_rows": cut,
            "holdout_rows": held,
            "candidates": ",".join(f"{c.spec.model.flavor}:{c.spec.model.estimator}" for c in candidates),
            "winner": winner.name,
            "gate_metric": spec.retrain.gate_metric,
            "min_improvement": spec.retrain.min_improvement,
            "champion_version": champion_version,
            "drift_reference": reference_name,
            "drift_current": "request current_rows" if current else "holdout rows",
        }
        metrics: dict[str, float | None] = {
            f"{model}.{metric}": values[metric] for model, values in results.items() for metric in METRICS
        }
        metrics.update(
            {
                "rows_from_feast": data.from_feast,
                "rows_from_labeled": data.from_labeled,
                "feast_mismatches": data.feast_mismatches,
                "labeled_duplicates": data.window.duplicates,
                **{f"{c.name}.train_seconds": c.seconds for c in candidates},
                **timings,
            }
        )
        step = time.perf_counter()
        info = record(
            spec,
            tracking_uri=uri,
            key=self.key,
            request=request,
            winner=winner,
            passed=decision.passed,
            reason=decision.reason,
            params=params,
            metrics=metrics,
            reference_rows=train_rows[-spec.drift.reference_size :],
            drift_reference=drift_reference,
            drift_current=drift_current,
            fingerprint=data.fingerprint,
        )
        total = time.perf_counter() - started
        _LOG.info(
            "request %s: registered %s v%d (%s, run %s) in %.1fs; whole retraining %.1fs",
            request_id,
            name,
            info.version,
            winner.name,
            info.run_id,
            time.perf_counter() - step,
            total,
        )
        self._audit(
            "registered",
            f"{winner.name} trained on {cut} rows, validated on {held}",
            request,
            version=info.version,
            details={
                "run_id": info.run_id,
                "candidate": winner.name,
                "metrics": results,
                "champion_version": champion_version,
                "rows_from_feast": data.from_feast,
                "rows_from_labeled": data.from_labeled,
                "dataset_fingerprint": data.fingerprint,
                "seconds": round(total, 2),
            },
        )
        if decision.passed and warmup:
            self._replace_placeholder(request, info.version, decision.reason)
        elif decision.passed:
            self._set_challenger(request, info.version, decision.reason)
        else:
            _LOG.info("request %s: v%d rejected: %s", request_id, info.version, decision.reason)
            self._audit("rejected", decision.reason, request, version=info.version)

    def _champion(self) -> LoadedModel | None:
        """The registered champion (for its reference sample and, when needed, its snapshot), verified; when it
        is refused, the version the workers serve instead; None without either."""
        current = aliases(self.spec.model.name, tracking_uri=self.tracking_uri)
        if CHAMPION not in current:
            return None
        try:
            return self.trusted.load(current[CHAMPION])
        except ModelRefused as refusal:
            found, others = self.trusted.fallback(current, self.trusted.load)
            for each in (refusal, *others):
                self._refused(each, found.version if found else None)
            return found

    def _is_placeholder(self, version: int) -> bool:
        """Whether the version's signed artifacts say it is the warm-up placeholder (a tag alone proves nothing)."""
        try:
            return self.trusted.reference(version).placeholder
        except ModelRefused as refusal:
            self._refused(refusal, None)
            return False

    def _refused(self, refusal: ModelRefused, serving: int | None) -> None:
        if refusal.news:
            _LOG.warning("%s", refusal)
            self._publish(refusal_record(ACTOR, refusal, serving))

    def _training_set(
        self, request: dict[str, Any], train_from: float | None, timings: dict[str, float]
    ) -> TrainingSet:
        """Read the window until it has enough rows (or the wait bound passes), then join Feast's features."""
        # Wall time, not event time: this waits for labelled events still on their way through Kafka, and the
        # stream's event time stands still exactly when they are late.
        deadline = time.monotonic() + self.max_data_wait_seconds
        announced = False
        while True:
            step = time.perf_counter()
            window = read_window(
                self.bootstrap, self.settings.topic_labeled, self.spec, train_from, group=f"{self.group}-reader"
            )
            timings["read_labeled_seconds"] = time.perf_counter() - step
            step = time.perf_counter()
            try:
                data = build_training_set(self.history, window, self.spec, train_from)
            except NotEnoughData as exc:
                if time.monotonic() >= deadline:
                    raise DriftloopError(
                        f"not enough labelled data after waiting {self.max_data_wait_seconds:g}s: {exc}"
                    ) from None
                _LOG.info("request %s: %s; reading again in %gs", request["request_id"], exc, self.data_retry_seconds)
                if not announced:
                    self._audit(
                        "waiting_for_data", str(exc), request, details={"rows": exc.found, "min_rows": exc.needed}
                    )
                    announced = True
                self._idle(self.data_retry_seconds)
                continue
            timings["feast_seconds"] = time.perf_counter() - step
            _LOG.info(
                "request %s: %d rows (%s .. %s) from %d labeled records (%d duplicates); features: %d from "
                "Feast, %d from the labeled records, %d mismatches",
                request["request_id"],
                len(data),
                contracts.iso_time(data.event_times[0]),
                contracts.iso_time(data.event_times[-1]),
                window.read,
                window.duplicates,
                data.from_feast,
                data.from_labeled,
                data.feast_mismatches,
            )
            return data

    def _set_challenger(self, request: dict[str, Any], version: int, reason: str) -> None:
        name, uri = self.spec.model.name, self.tracking_uri
        set_alias(name, CHALLENGER, version, tracking_uri=uri)
        set_version_tag(name, version, CHALLENGER_SET_TAG, contracts.iso_time(time.time()), tracking_uri=uri)
        _LOG.info("request %s: %s v%d is the challenger: %s", request["request_id"], name, version, reason)
        self._audit("challenger_set", reason, request, version=version)

    def _replace_placeholder(self, request: dict[str, Any], version: int, reason: str) -> None:
        name, uri = self.spec.model.name, self.tracking_uri
        current = aliases(name, tracking_uri=uri)
        placeholder = current.get(CHAMPION)
        if placeholder is None or not self._is_placeholder(placeholder):
            # someone chose a champion meanwhile: the warm-up model competes like any other
            self._set_challenger(request, version, reason)
            return
        now = time.time()
        state = alias_moves.apply_marked(
            name, uri, version, "promoted", current, alias_moves.promotion(version, current, now), now
        )
        _LOG.info(
            "request %s: %s v%d replaced the warm-up placeholder v%d as champion",
            request["request_id"],
            name,
            version,
            placeholder,
        )
        self._audit(
            "promoted",
            f"the first trained model replaces the warm-up placeholder v{placeholder}: {reason}",
            request,
            version=version,
            details={"from": current, "to": state},
        )

    def _finish(self, request: dict[str, Any], version: int) -> None:
        """A replayed request whose version exists: finish its decision if a crash came between passing and that."""
        name, uri = self.spec.model.name, self.tracking_uri
        tags = version_tags(name, version, tracking_uri=uri)
        if tags.get(GATE_TAG) == "passed" and request["reason"] == "warmup":
            if aliases(name, tracking_uri=uri).get(CHAMPION) != version:
                self._replace_placeholder(request, version, "passed the gate before the worker restarted")
                return
        elif tags.get(GATE_TAG) == "passed" and CHALLENGER_SET_TAG not in tags:
            if version not in aliases(name, tracking_uri=uri).values():
                self._set_challenger(request, version, "passed the gate before the worker restarted")
                return
        _LOG.info(
            "request %s: already done (v%d, gate %s); skipped", request["request_id"], version, tags.get(GATE_TAG, "?")
        )

    # -- helpers ----------------------------------------------------------------------------------------

    def _commit(self, message: Message) -> None:
        try:
            self.consumer.commit(message=message, asynchronous=False)
        except KafkaException as exc:  # e.g. the partition moved to another worker meanwhile
            # Uncommitted, the request is consumed again; its registered version makes that a skip.
            _LOG.warning(
                "could not commit the retrain request at %s[%d]@%d: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                exc.args[0].str(),
            )

    def _audit(
        self,
        action: str,
        reason: str,
        request: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        context = {} if request is None else {"request_id": request["request_id"]}
        self._publish(
            contracts.audit(
                actor=ACTOR,
                action=action,
                model_name=self.spec.model.name,
                reason=reason,
                version=version,
                details={**context, **(details or {})},
            )
        )

    def _publish(self, record: bytes) -> None:
        """Produce a signed audit record (the control plane acts only on signed ones) and wait for it."""
        topic = self.settings.topic_audit
        self.producer.produce(
            topic,
            value=record,
            key=self.spec.model.name.encode(),
            headers=contracts.signature_headers(self.key, topic, record),
        )
        if self.producer.flush(10):
            raise DriftloopError(f"the audit record {json.loads(record)['action']!r} was not delivered to {topic!r}")

    def _idle(self, seconds: float) -> None:
        """Wait, polling the paused consumer so the group keeps this member; raises _Stopped on stop."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        try:
            deadline = time.monotonic() + seconds
            while not self.stop.is_set() and time.monotonic() < deadline:
                self.heartbeat.beat()  # waiting for MLflow or for data is alive, not stuck
                early = self.consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
                if early is not None and early.error() is None:
                    # fetched before the pause took hold: rewind, so it is consumed after this request
                    # set on every record without an error, which the stubs cannot tell
                    self.consumer.seek(TopicPartition(early.topic(), early.partition(), early.offset()))  # type: ignore[arg-type]
        finally:
            self.consumer.resume(assignment)
        if self.stop.is_set():
            raise _Stopped()


def _parse(value: bytes | None) -> dict[str, Any]:
    try:
        request = json.loads(value or b"")
    except ValueError as exc:
        raise DriftloopError(f"not JSON: {exc}") from None
    if not isinstance(request, dict) or not request.get("request_id") or "model_name" not in request:
        raise DriftloopError("not a retrain request (request_id and model_name are required)")
    request["request_id"] = str(request["request_id"])
    request.setdefault("reason", "unspecified")
    request.setdefault("train_from", None)
    try:
        _epoch(request["train_from"])
    except ValueError:
        raise DriftloopError(f"train_from {request['train_from']!r} is not ISO-8601") from None
    return request


def _epoch(iso: str | None) -> float | None:
    if iso is None:
        return None
    parsed = datetime.fromisoformat(str(iso))
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed.timestamp()


def _columnar_rows(columns: Mapping[str, list[Any]] | None) -> list[dict[str, Any]]:
    if not columns:
        return []
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*(columns[name] for name in names))]


def _summary(results: Mapping[str, Mapping[str, float | None]]) -> str:
    return "; ".join(
        f"{model} "
        + ", ".join(
            f"{metric} {value:.4f}" if value is not None else f"{metric} n/a" for metric, value in values.items()
        )
        for model, values in results.items()
    )


def run_retrain_worker(
    settings: Settings, stop: threading.Event, *, bootstrap: str, tracking_uri: str, **options: float
) -> None:
    """Run the retraining worker until `stop` is set (options: see RetrainWorker)."""
    logging.getLogger("feast").setLevel(logging.WARNING)  # Feast logs every registry refresh at INFO
    spec = load_spec(settings.spec)
    kafka.wait_for_broker(bootstrap, timeout=15)
    kafka.ensure_topics(
        bootstrap, [settings.topic_retrain_requests, settings.topic_audit, settings.topic_labeled], settings.partitions
    )
    RetrainWorker(settings, spec, stop, bootstrap=bootstrap, tracking_uri=tracking_uri, **options).run()
