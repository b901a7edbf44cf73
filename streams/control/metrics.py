"""The control plane's Prometheus metrics: what it decided, how long retrainings took, where a canary trial stands.

Read from the `ControlPlane` after each of its calls (`observe`), on the thread that makes them, so they
always agree with its state; served on $DRIFTLOOP_CONTROL_METRICS_PORT (127.0.0.1 unless
DRIFTLOOP_BIND_HOST says otherwise). A retraining's duration runs from the trigger's request to the retrain
worker's final audit record (challenger set, rejected, failed, or the warm-up's promotion), by that outcome.

    >>> metrics = ControlMetrics()
    >>> metrics.observe([("audit", b'{"actor": "trigger", "action": "retrain_triggered"}')],
    ...                 in_flight={"request_id": "r1", "reason": "concept_drift", "since": 100.0}, last_finished=None,
    ...                 trial=None, now=100.0)
    >>> metrics.observe([], in_flight=None, trial=None, now=160.0,
    ...                 last_finished={"request_id": "r1", "outcome": "challenger_set"})
    >>> metrics.value("driftloop_retraining_seconds_sum", outcome="challenger_set")
    60.0
    >>> metrics.value("driftloop_decisions_total", actor="trigger", action="retrain_triggered")
    1.0
"""

from __future__ import annotations

import json
import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from driftloop.metrics_endpoint import MetricsEndpoint

# A warm-up retraining takes seconds; one waiting for min_rows of post-drift outcomes can take many minutes.
RETRAINING_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
ARMS = ("champion", "challenger")


class ControlMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self._decisions = Counter(
            "driftloop_decisions",
            "Audit records the control plane published, by actor (trigger, promotion, operator, control) and action.",
            ["actor", "action"],
            registry=r,
        )
        self._evaluations = Counter(
            "driftloop_drift_evaluations", "Drift evaluations (reports on the drift topic).", registry=r
        )
        self._drifted_share = Gauge(
            "driftloop_drifted_share",
            "Share of the input columns that drifted in the last drift evaluation (NaN until a reference is ready).",
            registry=r,
        )
        self._retraining = Histogram(
            "driftloop_retraining_seconds",
            "From the retrain request to the retrain worker's final record, by outcome.",
            ["outcome"],
            buckets=RETRAINING_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge(
            "driftloop_retraining_in_flight",
            "1 while a retraining requested by this control plane has not finished.",
            registry=r,
        )
        self._trial = Gauge("driftloop_canary_trial_running", "1 while a canary (or shadow) trial runs.", registry=r)
        self._trial_samples = Gauge(
            "driftloop_canary_samples", "Labelled events of the running trial, by arm.", ["arm"], registry=r
        )
        self._trial_error_rate = Gauge(
            "driftloop_canary_error_rate",
            "Error rate of the running trial, by arm (NaN without samples).",
            ["arm"],
            registry=r,
        )
        for outcome in ("challenger_set", "rejected", "retrain_failed", "promoted"):
            self._retraining.labels(outcome)  # every outcome is a series from the start, so a panel shows 0
        self._drifted_share.set(math.nan)
        self._clear_trial()
        self._waiting: dict[str, float] | None = None  # {request_id: since} of the retraining in flight
        self.endpoint = MetricsEndpoint(r, "DRIFTLOOP_CONTROL_METRICS_PORT")

    def observe(
        self,
        produced: list[tuple[str, bytes]],
        *,
        in_flight: dict[str, Any] | None,
        last_finished: dict[str, Any] | None,
        trial: dict[str, Any] | None,
        now: float,
    ) -> None:
        """After one ControlPlane call: its outputs, and the trigger policy's and the trial's state."""
        for kind, value in produced:
            record = _json(value)
            if kind == "audit":
                self._decisions.labels(str(record.get("actor")), str(record.get("action"))).inc()
            elif kind == "drift":
                self._evaluations.inc()
                share = (record.get("data") or {}).get("drifted_share")
                self._drifted_share.set(share if isinstance(share, (int, float)) else math.nan)
        self._retraining_state(in_flight, last_finished, now)
        if trial is None:
            self._clear_trial()
            return
        self._trial.set(1)
        for arm in ARMS:
            summary = trial.get(arm) or {}
            self._trial_samples.labels(arm).set(summary.get("samples") or 0)
            rate = summary.get("error_rate")
            self._trial_error_rate.labels(arm).set(rate if isinstance(rate, (int, float)) else math.nan)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def _retraining_state(
        self, in_flight: dict[str, Any] | None, last_finished: dict[str, Any] | None, now: float
    ) -> None:
        waiting = self._waiting
        if waiting is not None and (in_flight is None or in_flight["request_id"] not in waiting):
            finished = last_finished if last_finished and last_finished.get("request_id") in waiting else None
            if finished is not None:
                self._retraining.labels(str(finished["outcome"])).observe(now - waiting[finished["request_id"]])
        self._waiting = None if in_flight is None else {in_flight["request_id"]: float(in_flight["since"])}
        self._in_flight.set(0 if in_flight is None else 1)

    def _clear_trial(self) -> None:
        self._trial.set(0)
        for arm in ARMS:
            self._trial_samples.labels(arm).set(0)
            self._trial_error_rate.labels(arm).set(math.nan)


def _json(value: bytes) -> dict[str, Any]:
    try:
        record = json.loads(value)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}
