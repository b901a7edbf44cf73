"""The pulse of the running workers between two looks at their /metrics: events/s, lag, p99, who serves.

A `Snapshot` is what every worker's counters say at one moment (summed over the workers, as `driftloop
status` sums them); a `Pulse` is the difference of two snapshots, so its rates and its p99 cover the
interval between them, not the workers' whole life. A counter that went down (a worker restarted and
counts from 0 again) is read as Prometheus' rate() reads it: the new value is all that happened.

    >>> from driftloop.streams.worker.metrics import WorkerMetrics
    >>> from driftloop.status import Scrape
    >>> def scrape(metrics: WorkerMetrics) -> Scrape:
    ...     from prometheus_client import generate_latest
    ...     from prometheus_client.parser import text_string_to_metric_families
    ...     samples: Scrape = {}
    ...     for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
    ...         for sample in family.samples:
    ...             samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    ...     return samples
    >>> worker = WorkerMetrics()
    >>> before = Snapshot.of([scrape(worker)], at=100.0)
    >>> worker.events_predicted(900)
    >>> worker.predictions(3, "champion", 810)
    >>> worker.predictions(4, "canary", 90)
    >>> worker.event_latencies([0.004] * 890 + [0.2] * 10)
    >>> pulse = Pulse.between(before, Snapshot.of([scrape(worker)], at=110.0))
    >>> pulse.events_per_second, pulse.serving["canary"]
    (90.0, Serving(versions=(4,), share=0.1))
    >>> round(pulse.p99_seconds, 3)
    0.16
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from driftloop.status import Scrape, histogram_buckets, histogram_quantile, summarize

LATENCY_METRIC = "driftloop_event_latency_seconds"


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic() or any clock: only differences are used
    events_in: int  # predicted + dead-lettered
    predictions: dict[tuple[str, str], int]  # (model version, variant) -> predictions
    latency_buckets: dict[float, float]  # cumulative {upper bound: events}
    lag: int  # records behind, summed over the workers' partitions

    @classmethod
    def of(cls, scrapes: list[Scrape], at: float) -> Snapshot:
        summary = summarize(scrapes)
        predictions = {
            (version, variant): n
            for version, variants in summary["predictions"].items()
            for variant, n in variants.items()
        }
        return cls(
            at,
            summary["events"]["in"],
            predictions,
            histogram_buckets(scrapes, LATENCY_METRIC),
            summary["consumer_lag"]["total"],
        )


@dataclass(frozen=True)
class Serving:
    versions: tuple[int, ...]  # several while a new version rolls out to the workers
    share: float  # of the interval's predictions


@dataclass(frozen=True)
class Pulse:
    seconds: float  # the interval
    events_per_second: float
    p99_seconds: float | None  # broker append to prediction, of the interval's events; None without any
    lag: int
    serving: dict[str, Serving]  # variant ("champion", "canary", "shadow") -> what served it

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot) -> Pulse:
        seconds = max(after.at - before.at, 1e-9)
        buckets = {
            bound: _increase(before.latency_buckets.get(bound, 0.0), count)
            for bound, count in after.latency_buckets.items()
        }
        by_variant: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        for (version, variant), count in after.predictions.items():
            by_variant[variant][int(version)] += _increase(before.predictions.get((version, variant), 0), count)
        total = sum(sum(versions.values()) for versions in by_variant.values())
        serving = {
            variant: Serving(tuple(sorted(v for v, n in versions.items() if n)), sum(versions.values()) / total)
            for variant, versions in sorted(by_variant.items())
            if total and sum(versions.values())
        }
        return cls(
            seconds,
            _increase(before.events_in, after.events_in) / seconds,
            histogram_quantile(0.99, buckets),
            after.lag,
            serving,
        )


def _increase(before: float, after: float) -> float:
    return after - before if after >= before else after
