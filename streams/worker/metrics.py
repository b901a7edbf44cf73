"""The scoring worker's Prometheus metrics, and the /metrics endpoint that serves them.

Every metric lives in the `CollectorRegistry` a `WorkerMetrics` owns (never prometheus_client's
global one), so tests and several workers in one process do not collide. The metric names and labels
are a contract: the worker, `driftloop status` and the Grafana dashboard all read them.

The facade is shaped for the worker's hot path: every call is batch-level (`events_predicted(n)`,
`dead_lettered(reason, n)`, ...), the label children of fixed label sets are resolved once here, and
the one per-event metric, the event latency histogram, takes a whole batch of observations under a
single lock (`event_latencies`), which costs about a tenth of calling `Histogram.observe` per event.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from driftloop import __version__
from driftloop.metrics_endpoint import MetricsEndpoint
from driftloop.streams.contracts import WORKER_DLQ_REASONS
from driftloop.streams.worker.breaker import STATES as BREAKER_STATES
from driftloop.streams.worker.slo import Setting
from driftloop.streams.worker.validation import REASONS

EVENT_RESULTS = ("predicted", "dead_lettered")
# store_write: the state stores' RocksDB writes, run by the loop a batch at a time (streams/state/store.py).
STAGES = ("ingest", "features", "feast_write", "score", "produce", "checkpoint", "store_write")
# expired_unmatched: an outcome whose prediction never came; prediction_expired: the other way round.
OUTCOME_RESULTS = ("joined", "expired_unmatched", "invalid", "duplicate", "prediction_expired")
JOIN_SIDES = ("prediction", "outcome")
SLO_RESULTS = ("within", "over")
BREAKER_ACTIONS = ("breaker_opened", "breaker_closed")
LIVE_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss", "roc_auc")

# 0.1 ms .. 5 s: an in-memory feature update and a slow Feast write both land in a real bucket.
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# Fine between 1 and 100 ms, where a healthy pipeline's append-to-prediction latency lives, so
# p50/p99 estimates interpolate inside narrow buckets; coarse beyond, where only "how bad" matters.
EVENT_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class BatchHistogram:
    """A label-less histogram fed a batch at a time: one lock acquisition per batch, not per value.

    Exposed exactly like a prometheus_client Histogram (`_bucket{le}`, `_sum`, `_count`).
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.bounds = tuple(float(bound) for bound in buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, counts, total = self.bounds, [0] * (len(self.bounds) + 1), 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # first bound >= value: Prometheus buckets are "le"
            total += value
        with self._lock:
            self._counts = [mine + new for mine, new in zip(self._counts, counts)]
            self._sum += total

    def describe(self) -> list[HistogramMetricFamily]:
        # Lets the registry reject a second metric of the same name, as it does for its own types.
        return [HistogramMetricFamily(self.name, self.documentation, labels=())]

    def collect(self) -> list[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), counts):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        return [HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)]


class WorkerMetrics:
    """All of a worker's metrics in one registry; call the methods once per batch, with counts."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._events = Counter(
            "driftloop_events",
            "Consumed event records by result; in = predicted + dead_lettered.",
            ["result"],
            registry=r,
        )
        self._dlq = Counter(
            "driftloop_dlq", "Event records sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self._unseen = Counter(
            "driftloop_unseen_categories", "Category values outside the spec's values, by field.", ["field"], registry=r
        )
        self._missing = Counter(
            "driftloop_missing_values", "Optional fields absent or null, by field.", ["field"], registry=r
        )
        self._predictions = Counter(
            "driftloop_predictions",
            "Predictions produced, by model version and variant.",
            ["model_version", "variant"],
            registry=r,
        )
        self._stage_seconds = Histogram(
            "driftloop_stage_seconds",
            "Duration of one batch's pass through a stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._batch_size = Histogram(
            "driftloop_batch_size", "Event records per consumed batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self._event_latency = BatchHistogram(
            "driftloop_event_latency_seconds",
            "Per event: broker append time (Kafka message timestamp) to its prediction being produced.",
            EVENT_LATENCY_BUCKETS,
            r,
        )
        self._consumer_lag = Gauge(
            "driftloop_consumer_lag", "Records behind the partition's end.", ["topic", "partition"], registry=r
        )
        self._model_version = Gauge(
            "driftloop_model_version", "Registered model version in use, by variant.", ["model", "variant"], registry=r
        )
        self._outcomes = Counter(
            "driftloop_outcomes", "Outcome records by what the join did with them.", ["result"], registry=r
        )
        self._join_pending = Gauge(
            "driftloop_join_pending", "Records waiting in the join for their other side.", ["side"], registry=r
        )
        self._live_metric = Gauge(
            "driftloop_live_metric",
            "Model quality over a rolling window of joined outcomes.",
            ["model_version", "metric"],
            registry=r,
        )
        self._live_samples = Gauge(
            "driftloop_live_samples", "Joined outcomes in the live-metric window.", ["model_version"], registry=r
        )
        self._feast_rows = Counter("driftloop_feast_rows", "Feature rows written to Feast.", registry=r)
        self._recovered = Counter(
            "driftloop_recovered_events",
            "Event records consumed again after a restart, by "
            "how: answered from the output journal, or skipped (outputs already delivered).",
            ["how"],
            registry=r,
        )
        self._bad_records = Counter(
            "driftloop_bad_records",
            "Records of internal or learned-from topics that could not be read and were skipped, by topic.",
            ["topic"],
            registry=r,
        )
        self._models_refused = Counter(
            "driftloop_models_refused",
            "Model versions this worker refused to load (unsigned or failing their signature), each counted once.",
            registry=r,
        )
        self._slo_objective = Gauge(
            "driftloop_slo_objective_seconds", "The spec's p99 latency objective (slo.p99_ms).", registry=r
        )
        self._slo_events = Counter(
            "driftloop_slo_events",
            "Predicted events by whether their append-to-prediction latency was within the objective.",
            ["result"],
            registry=r,
        )
        self._slo_share_over = Gauge(
            "driftloop_slo_over_share", "Share of events over the objective in the rolling slo.window.", registry=r
        )
        self._slo_burn = Gauge(
            "driftloop_slo_burn_rate",
            "Error-budget burn rate over slo.window: the share over the objective / the 1% a p99 allows.",
            registry=r,
        )
        self._batch_limit = Gauge(
            "driftloop_batch_size_limit", "Records the next consume call asks for, as the SLO steers it.", registry=r
        )
        self._fetch_wait = Gauge(
            "driftloop_fetch_wait_seconds",
            "How long a consume call waits for its batch, as the SLO steers it.",
            registry=r,
        )
        self._breaker_state = Gauge(
            "driftloop_breaker_state",
            "A model version's circuit breaker: 0 closed, 1 half-open (probing), 2 open (the fallback serves).",
            ["model_version"],
            registry=r,
        )
        self._breaker_changes = Counter(
            "driftloop_breaker_changes", "Circuit breakers opened and closed.", ["action"], registry=r
        )
        self._info = Info("driftloop_worker", "Which worker, spec and driftloop version this is.", registry=r)

        # Every fixed label value exists from the start, so a rate is 0 (not absent) until it moves.
        self._event_result = {result: self._events.labels(result) for result in EVENT_RESULTS}
        self._dlq_reason = {reason: self._dlq.labels(reason) for reason in (*REASONS, *WORKER_DLQ_REASONS)}
        self._stage = {stage: self._stage_seconds.labels(stage) for stage in STAGES}
        self._outcome_result = {result: self._outcomes.labels(result) for result in OUTCOME_RESULTS}
        self._pending = {side: self._join_pending.labels(side) for side in JOIN_SIDES}
        self._recovered_how = {how: self._recovered.labels(how) for how in ("replayed", "skipped")}
        self._slo_result = {result: self._slo_events.labels(result) for result in SLO_RESULTS}
        self._breaker_action = {action: self._breaker_changes.labels(action) for action in BREAKER_ACTIONS}
        self._breaker_versions: set[str] = set()
        # Label sets of the gauges whose series come and go (partitions, variants, model versions).
        self._lag_labels: set[tuple[str, str]] = set()
        self._model_labels: set[tuple[str, str]] = set()
        self._live_versions: set[str] = set()
        self._endpoint = MetricsEndpoint(r, "DRIFTLOOP_METRICS_PORT")

    def info(self, *, worker_id: str, spec: str, version: str = __version__) -> None:
        self._info.info({"worker_id": worker_id, "spec": spec, "version": version})

    def batch(self, size: int, stage_seconds: Mapping[str, float]) -> None:
        """One consumed batch: its size and how long each stage (a key of STAGES) took on it."""
        self._batch_size.observe(size)
        for stage, seconds in stage_seconds.items():
            self._stage[stage].observe(seconds)

    def stage(self, stage: str, seconds: float) -> None:
        """One pass of a stage that runs apart from the batch (a Feast flush, a checkpoint)."""
        self._stage[stage].observe(seconds)

    def events_predicted(self, events: int) -> None:
        """Event records that were scored (however many variants scored each)."""
        self._event_result["predicted"].inc(events)

    def dead_lettered(self, reason: str, events: int = 1) -> None:
        """Event records sent to the DLQ; reason is a key of validation.REASONS or contracts.WORKER_DLQ_REASONS."""
        self._dlq_reason[reason].inc(events)
        self._event_result["dead_lettered"].inc(events)

    def predictions(self, model_version: int | str, variant: str, count: int) -> None:
        self._predictions.labels(str(model_version), variant).inc(count)

    def unseen_categories(self, field: str, count: int = 1) -> None:
        self._unseen.labels(field).inc(count)

    def missing_values(self, field: str, count: int = 1) -> None:
        self._missing.labels(field).inc(count)

    def event_latencies(self, seconds: Iterable[float]) -> None:
        """Append-to-prediction latency of each event of a batch, in seconds."""
        self._event_latency.observe_many(seconds)

    def feast_rows(self, rows: int) -> None:
        self._feast_rows.inc(rows)

    def recovered(self, *, replayed: int, skipped: int) -> None:
        """Records consumed again after a restart (streams/worker/scoring.py): from the journal, or skipped."""
        if replayed:
            self._recovered_how["replayed"].inc(replayed)
        if skipped:
            self._recovered_how["skipped"].inc(skipped)

    def bad_records(self, topic: str, count: int = 1) -> None:
        self._bad_records.labels(topic).inc(count)

    def model_refused(self) -> None:
        self._models_refused.inc()

    def outcomes(self, result: str, count: int = 1) -> None:
        """Outcome records by result, a value of OUTCOME_RESULTS."""
        self._outcome_result[result].inc(count)

    def join_pending(self, *, predictions: int, outcomes: int) -> None:
        self._pending["prediction"].set(predictions)
        self._pending["outcome"].set(outcomes)

    def consumer_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        """The lag of every partition this worker owns now; partitions it lost disappear."""
        current = {(topic, str(partition)): behind for (topic, partition), behind in lag.items()}
        self._replace(self._consumer_lag, self._lag_labels, current)
        self._lag_labels = set(current)

    def model_versions(self, versions: Mapping[tuple[str, str], int]) -> None:
        """{(model, variant): version} for every variant in use; a retired variant disappears."""
        self._replace(self._model_version, self._model_labels, dict(versions))
        self._model_labels = set(versions)

    def live_metrics(self, snapshot: Mapping[int | str, Mapping[str, float | int | None]]) -> None:
        """Publish a `LiveMetrics.snapshot()`; versions absent from it disappear.

        A metric that is undefined on the window (None: ROC AUC with one class) is published as NaN,
        which Prometheus and Grafana show as a gap rather than a misleading number.
        """
        versions = {str(version): values for version, values in snapshot.items()}
        for version, values in versions.items():
            for metric in LIVE_METRICS:
                value = values[metric]
                self._live_metric.labels(version, metric).set(float("nan") if value is None else value)
            self._live_samples.labels(version).set(values["samples"] or 0)
        for version in self._live_versions - set(versions):
            for metric in LIVE_METRICS:
                self._live_metric.remove(version, metric)
            self._live_samples.remove(version)
        self._live_versions = set(versions)

    def slo_events(self, events: int, over: int) -> None:
        """A batch's predicted events, `over` of them slower than the objective."""
        self._slo_result["over"].inc(over)
        self._slo_result["within"].inc(events - over)

    def slo(self, *, objective: float, share_over: float, burn_rate: float, setting: Setting) -> None:
        self._slo_objective.set(objective)
        self._slo_share_over.set(share_over)
        self._slo_burn.set(burn_rate)
        self._batch_limit.set(setting.batch_size)
        self._fetch_wait.set(setting.fetch_wait)

    def breaker_change(self, action: str) -> None:
        self._breaker_action[action].inc()

    def breakers(self, states: Mapping[int, str]) -> None:
        """{model version: breaker state}; versions absent from it disappear."""
        current = {str(version): float(BREAKER_STATES.index(state)) for version, state in states.items()}
        for version, value in current.items():
            self._breaker_state.labels(version).set(value)
        for version in self._breaker_versions - set(current):
            self._breaker_state.remove(version)
        self._breaker_versions = set(current)

    @staticmethod
    def _replace(gauge: Gauge, published: set[tuple[str, str]], values: Mapping[tuple[str, str], float]) -> None:
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        for labels in published - set(values):
            gauge.remove(*labels)

    def serve(self, port: int, host: str) -> int:
        """Serve /metrics on host:port (0 = a free port) from a daemon thread; returns the bound port."""
        return self._endpoint.serve(port, host)

    def stop_serving(self) -> None:
        """Close the endpoint's socket and join its thread; a no-op when not serving."""
        self._endpoint.stop()
