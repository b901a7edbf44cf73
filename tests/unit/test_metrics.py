"""The worker's metrics as Prometheus scrapes them: names, labels, values, and the /metrics endpoint."""

from __future__ import annotations

import math
import socket
import threading
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from driftloop.errors import DriftloopError
from driftloop.streams.worker.metrics import EVENT_LATENCY_BUCKETS, LIVE_METRICS, WorkerMetrics
from driftloop.streams.worker.validation import REASONS


def samples(metrics: WorkerMetrics) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of one exposition, as a scraper reads it."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_events_in_is_predicted_plus_dead_lettered_and_every_reason_starts_at_zero():
    metrics = WorkerMetrics()
    assert {value(metrics, "driftloop_dlq_total", reason=reason) for reason in REASONS} == {0.0}
    metrics.events_predicted(95)
    metrics.dead_lettered("invalid_json", 3)
    metrics.dead_lettered("out_of_range")
    assert value(metrics, "driftloop_events_total", result="predicted") == 95
    assert value(metrics, "driftloop_events_total", result="dead_lettered") == 4
    assert value(metrics, "driftloop_dlq_total", reason="invalid_json") == 3
    assert value(metrics, "driftloop_dlq_total", reason="out_of_range") == 1


def test_batch_level_counters_and_histograms():
    metrics = WorkerMetrics()
    metrics.predictions(3, "champion", 90)
    metrics.predictions("4", "canary", 10)
    metrics.unseen_categories("country", 2)
    metrics.missing_values("channel")
    metrics.feast_rows(100)
    metrics.outcomes("joined", 40)
    metrics.outcomes("expired_unmatched")
    metrics.batch(100, {"ingest": 0.0002, "score": 0.003})
    metrics.stage("checkpoint", 0.02)
    metrics.info(worker_id="w-1", spec="card_fraud")
    assert value(metrics, "driftloop_predictions_total", model_version="3", variant="champion") == 90
    assert value(metrics, "driftloop_predictions_total", model_version="4", variant="canary") == 10
    assert value(metrics, "driftloop_unseen_categories_total", field="country") == 2
    assert value(metrics, "driftloop_missing_values_total", field="channel") == 1
    assert value(metrics, "driftloop_feast_rows_total") == 100
    assert value(metrics, "driftloop_outcomes_total", result="joined") == 40
    assert value(metrics, "driftloop_outcomes_total", result="expired_unmatched") == 1
    assert value(metrics, "driftloop_outcomes_total", result="duplicate") == 0
    assert value(metrics, "driftloop_batch_size_sum") == 100
    assert value(metrics, "driftloop_stage_seconds_bucket", stage="ingest", le="0.00025") == 1
    assert value(metrics, "driftloop_stage_seconds_bucket", stage="ingest", le="0.0001") == 0
    assert value(metrics, "driftloop_stage_seconds_count", stage="score") == 1
    assert value(metrics, "driftloop_stage_seconds_count", stage="checkpoint") == 1
    assert value(metrics, "driftloop_stage_seconds_count", stage="feast_write") == 0
    assert value(metrics, "driftloop_worker_info", worker_id="w-1", spec="card_fraud", version="0.1.0") == 1


def test_batched_event_latencies_expose_what_a_prometheus_histogram_would():
    # Values on bucket bounds, between them, below the first and beyond the last.
    observed = [0.0, 0.0005, 0.0007, 0.001, 0.0049, 0.005, 0.02, 0.099, 0.1, 29.0, 30.0, 31.0, 120.0]
    metrics = WorkerMetrics()
    metrics.event_latencies(observed[:5])
    metrics.event_latencies(observed[5:])
    reference = Histogram(
        "driftloop_event_latency_seconds", "", buckets=EVENT_LATENCY_BUCKETS, registry=CollectorRegistry()
    )
    for latency in observed:
        reference.observe(latency)
    expected = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in reference.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }
    ours = {key: v for key, v in samples(metrics).items() if key[0].startswith("driftloop_event_latency_seconds")}
    assert set(ours) == set(expected)
    for key, expected_value in expected.items():
        assert ours[key] == pytest.approx(expected_value), key


def test_gauges_follow_what_the_worker_owns_now():
    metrics = WorkerMetrics()
    metrics.consumer_lag({("events", 0): 5, ("events", 1): 7})
    metrics.consumer_lag({("events", 1): 2, ("outcomes", 0): 1})  # partition 0 was revoked
    assert value(metrics, "driftloop_consumer_lag", topic="events", partition="0") is None
    assert value(metrics, "driftloop_consumer_lag", topic="events", partition="1") == 2
    assert value(metrics, "driftloop_consumer_lag", topic="outcomes", partition="0") == 1

    metrics.model_versions({("card_fraud", "champion"): 3, ("card_fraud", "canary"): 4})
    metrics.model_versions({("card_fraud", "champion"): 4})  # the canary was promoted
    assert value(metrics, "driftloop_model_version", model="card_fraud", variant="champion") == 4
    assert value(metrics, "driftloop_model_version", model="card_fraud", variant="canary") is None

    metrics.join_pending(predictions=12, outcomes=3)
    assert value(metrics, "driftloop_join_pending", side="prediction") == 12
    assert value(metrics, "driftloop_join_pending", side="outcome") == 3


def test_live_metrics_publish_a_snapshot_and_drop_versions_that_left_it():
    metrics = WorkerMetrics()
    one_class = dict.fromkeys(LIVE_METRICS, 1.0) | {"roc_auc": None, "samples": 20}
    metrics.live_metrics({3: dict.fromkeys(LIVE_METRICS, 0.5) | {"samples": 100}, 4: one_class})
    assert value(metrics, "driftloop_live_metric", model_version="3", metric="f1") == 0.5
    assert value(metrics, "driftloop_live_samples", model_version="4") == 20
    assert math.isnan(value(metrics, "driftloop_live_metric", model_version="4", metric="roc_auc"))
    metrics.live_metrics({4: one_class})
    assert not [key for key in samples(metrics) if ("model_version", "3") in key[1]]


def test_workers_in_one_process_do_not_share_or_touch_the_global_registry():
    first, second = WorkerMetrics(), WorkerMetrics()
    first.events_predicted(5)
    assert value(second, "driftloop_events_total", result="predicted") == 0
    assert b"driftloop_" not in generate_latest(REGISTRY)


def test_a_second_metric_of_the_same_name_is_refused_as_for_prometheus_types():
    metrics = WorkerMetrics()
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("driftloop_event_latency_seconds", "", registry=metrics.registry)


def test_serve_on_a_free_port_then_stop_leaves_no_thread_or_socket():
    threads_before = threading.active_count()
    metrics = WorkerMetrics()
    metrics.dead_lettered("too_large", 2)
    port = metrics.serve(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert 'driftloop_dlq_total{reason="too_large"} 2.0' in body
        with pytest.raises(RuntimeError):
            metrics.serve(0, "127.0.0.1")
    finally:
        metrics.stop_serving()
    assert threading.active_count() == threads_before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    metrics.stop_serving()  # a second stop is harmless


def test_a_taken_port_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DriftloopError, match=f"cannot serve metrics on 127.0.0.1:{port}.*DRIFTLOOP_METRICS_PORT"):
            WorkerMetrics().serve(port, "127.0.0.1")
