"""`driftloop status` against real /metrics endpoints fed through the worker's metrics facade."""

from __future__ import annotations

import json

import numpy as np
import pytest

from driftloop.cli import main
from driftloop.models.live_metrics import LiveMetrics
from driftloop.status import histogram_quantile
from driftloop.streams.worker.metrics import EVENT_LATENCY_BUCKETS, WorkerMetrics
from driftloop.streams.worker.slo import Setting


@pytest.fixture
def serve():
    """serve(metrics) -> its /metrics URL on a free port; every endpoint is stopped afterwards."""
    served: list[WorkerMetrics] = []

    def start(metrics: WorkerMetrics) -> str:
        port = metrics.serve(0, "127.0.0.1")
        served.append(metrics)
        return f"http://127.0.0.1:{port}/metrics"

    yield start
    for metrics in served:
        metrics.stop_serving()


def a_worker(worker_id: str, *, predicted: int, invalid_json: int, lag: dict, live: LiveMetrics) -> WorkerMetrics:
    metrics = WorkerMetrics()
    metrics.info(worker_id=worker_id, spec="card_fraud")
    metrics.batch(predicted + invalid_json, {"ingest": 0.0004, "features": 0.002, "score": 0.006, "produce": 0.0009})
    metrics.events_predicted(predicted)
    metrics.dead_lettered("invalid_json", invalid_json)
    metrics.predictions(3, "champion", predicted)
    metrics.unseen_categories("country", 1)
    metrics.consumer_lag(lag)
    metrics.model_versions({("card_fraud", "champion"): 3})
    metrics.outcomes("joined", predicted // 2)
    metrics.outcomes("expired_unmatched", 1)
    metrics.join_pending(predictions=predicted - predicted // 2, outcomes=2)
    metrics.feast_rows(predicted)
    metrics.live_metrics(live.snapshot())
    return metrics


def status_json(capsys, *args: str) -> dict:
    assert main(["status", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_status_reports_what_the_worker_counted(serve, capsys):
    live = LiveMetrics(threshold=0.5)
    live.update_many(3, [1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6])
    metrics = a_worker("w-1", predicted=90, invalid_json=10, lag={("events", 0): 4, ("events", 1): 6}, live=live)
    metrics.dead_lettered("out_of_range", 5)
    metrics.predictions(4, "canary", 9)
    latencies = np.random.default_rng(3).uniform(0.001, 0.05, 2000)
    metrics.event_latencies(latencies.tolist())
    summary = status_json(capsys, "--url", serve(metrics))

    assert summary["events"] == {
        "in": 105,
        "predicted": 90,
        "dead_lettered": 15,
        "dead_lettered_by_reason": {"invalid_json": 10, "out_of_range": 5},
    }
    assert summary["unseen_categories"] == {"country": 1}
    assert summary["predictions"] == {"3": {"champion": 90}, "4": {"canary": 9}}
    assert summary["models"] == {"card_fraud": {"champion": [3]}}
    assert summary["consumer_lag"] == {"total": 10, "by_topic": {"events": 10}}
    assert summary["outcomes"] == {
        "joined": 45,
        "expired_unmatched": 1,
        "invalid": 0,
        "duplicate": 0,
        "prediction_expired": 0,
        "pending_predictions": 45,
        "pending_outcomes": 2,
    }
    assert summary["feast_rows"] == 90
    assert summary["batches"] == {"count": 1, "mean_size": 100.0}
    assert summary["workers"]["info"] == [{"worker_id": "w-1", "spec": "card_fraud", "version": "0.1.0"}]
    assert summary["live_metrics"] == {
        "3": pytest.approx(
            {
                "accuracy": 0.5,
                "precision": 0.5,
                "recall": 0.5,
                "f1": 0.5,
                "log_loss": live.snapshot()[3]["log_loss"],
                "roc_auc": 0.75,
                "samples": 4,
            }
        )
    }

    # Stage durations sit inside one bucket each: p50/p99 interpolate inside it.
    score = summary["stage_seconds"]["score"]
    assert score["count"] == 1 and 0.005 < score["p50"] < score["p99"] <= 0.01
    assert summary["stage_seconds"]["feast_write"] == {"count": 0, "p50": None, "p99": None}
    assert list(summary["stage_seconds"])[:5] == ["ingest", "features", "feast_write", "score", "produce"]
    latency = summary["event_latency_seconds"]
    assert latency["count"] == 2000
    for q in (50, 95, 99):  # within the width of the bucket that holds the true quantile
        true = np.percentile(latencies, q)
        upper = next(bound for bound in EVENT_LATENCY_BUCKETS if bound >= true)
        lower = max([0.0] + [bound for bound in EVENT_LATENCY_BUCKETS if bound < true])
        assert abs(latency[f"p{q}"] - true) <= upper - lower, q


def test_status_sums_workers_and_weights_live_metrics_by_their_windows(serve, capsys):
    right, wrong = LiveMetrics(threshold=0.5), LiveMetrics(threshold=0.5)
    right.update_many(3, [1, 0, 1], [0.9, 0.1, 0.8])  # accuracy 1 over 3 samples
    wrong.update(3, 1, 0.2)  # accuracy 0 over 1 sample
    first = serve(a_worker("w-1", predicted=60, invalid_json=2, lag={("events", 0): 4}, live=right))
    second = serve(a_worker("w-2", predicted=40, invalid_json=1, lag={("events", 1): 3}, live=wrong))
    summary = status_json(capsys, "--url", first, second)

    assert summary["workers"]["answered"] == [first, second]
    assert summary["events"]["in"] == 103
    assert summary["predictions"] == {"3": {"champion": 100}}
    assert summary["consumer_lag"]["total"] == 7
    assert summary["outcomes"]["pending_predictions"] == 30 + 20
    assert summary["models"] == {"card_fraud": {"champion": [3]}}  # both report v3: listed once
    live = summary["live_metrics"]["3"]
    assert live["samples"] == 4
    assert live["accuracy"] == pytest.approx(0.75)
    assert live["roc_auc"] == 1.0  # the one-class worker's AUC is undefined and does not count


def test_status_finds_workers_from_the_metrics_port_and_stack_json(serve, capsys, tmp_path, monkeypatch):
    live = LiveMetrics(threshold=0.5)
    local = serve(a_worker("local", predicted=10, invalid_json=0, lag={}, live=live))
    listed = serve(a_worker("listed", predicted=20, invalid_json=0, lag={}, live=live))
    (tmp_path / "stack.json").write_text(json.dumps({"bootstrap": "x", "metrics_urls": [listed, local]}))
    monkeypatch.setenv("DRIFTLOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DRIFTLOOP_METRICS_PORT", local.split(":")[2].split("/")[0])
    summary = status_json(capsys)
    assert summary["workers"]["answered"] == [local, listed]
    assert summary["events"]["predicted"] == 30


def test_status_prints_a_readable_summary_and_names_unreachable_workers(serve, capsys, unused_url):
    live = LiveMetrics(threshold=0.5)
    live.update_many(7, [1, 0], [0.8, 0.3])
    url = serve(a_worker("w-1", predicted=90, invalid_json=10, lag={("events", 0): 4}, live=live))
    assert main(["status", "--url", url, "--url", unused_url]) == 0
    out = capsys.readouterr().out
    assert "w-1 (spec card_fraud, driftloop 0.1.0)" in out
    assert f"unreachable: {unused_url}" in out
    assert "events      in 100, predicted 90, dead-lettered 10 (invalid_json 10)" in out
    assert "predictions v3 champion 90" in out
    assert "lag         4 records behind (events 4)" in out
    assert "live v7" in out and "accuracy 1.000" in out and "(window 2)" in out


@pytest.fixture
def unused_url() -> str:
    """A URL nothing listens on: a port the OS just handed out and took back."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


def test_no_worker_answering_is_one_line_and_exit_2(capsys, unused_url):
    assert main(["status", "--url", unused_url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"driftloop: error: no driftloop worker answered at {unused_url} (is `driftloop up` running?)\n"
    )


def test_an_endpoint_without_driftloop_metrics_is_not_a_worker(capsys, unused_url):
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    Counter("something_else", "not driftloop", registry=registry).inc()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        assert main(["status", "--url", url]) == 2
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert "no driftloop worker answered at" in capsys.readouterr().err


@pytest.mark.parametrize(
    "q, expected",
    [
        (0.5, 0.015),  # rank 50 of 100, halfway into the (0.01, 0.02] bucket that holds ranks 41..60
        (0.4, 0.01),  # exactly the 0.01 bound
        (0.1, 0.0025),  # first bucket starts at 0: a quarter of (0, 0.01]
        (0.99, 0.02),  # a rank in +Inf answers the largest finite bound
    ],
)
def test_quantiles_are_estimated_as_prometheus_does(q, expected):
    buckets = {0.01: 40.0, 0.02: 60.0, float("inf"): 100.0}
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_no_observations_have_no_quantile():
    assert histogram_quantile(0.5, {0.01: 0.0, float("inf"): 0.0}) is None


def test_status_shows_what_driftloop_up_reports_of_its_children(serve, capsys, tmp_path, monkeypatch, unused_url):
    from driftloop.supervisor import SupervisorMetrics

    worker = serve(a_worker("w-1", predicted=1, invalid_json=0, lag={}, live=LiveMetrics(threshold=0.5)))
    supervisor = SupervisorMetrics()
    for child in ("broker", "worker", "control"):
        supervisor.track(child)
    for _ in range(2):
        supervisor.restarted("worker")
    supervisor.restarted("control")
    supervisor.set_up("control", False)
    port = supervisor.serve(0, "127.0.0.1")
    monkeypatch.setenv("DRIFTLOOP_DATA_DIR", str(tmp_path))
    stack = tmp_path / "stack.json"
    try:
        stack.write_text(
            json.dumps({"metrics_urls": [worker], "supervisor_metrics_url": f"http://127.0.0.1:{port}/metrics"})
        )
        assert status_json(capsys, "--url", worker)["supervisor"]["children"] == {
            "broker": {"up": True, "restarts": 0},
            "worker": {"up": True, "restarts": 2},
            "control": {"up": False, "restarts": 1},
        }
        assert main(["status", "--url", worker]) == 0
        assert "children    broker up, worker up (2 restarts), control down (1 restart)\n" in capsys.readouterr().out
    finally:
        supervisor.stop_serving()
    stack.write_text(json.dumps({"metrics_urls": [worker], "supervisor_metrics_url": unused_url}))
    assert main(["status", "--url", worker]) == 0
    assert f"children    not shown: {unused_url}: [Errno 111] Connection refused" in capsys.readouterr().out


def test_status_shows_the_slo_burn_how_each_worker_steers_and_open_breakers(serve, capsys):
    live = LiveMetrics(threshold=0.5)
    first = a_worker("w-1", predicted=60, invalid_json=0, lag={}, live=live)
    first.slo_events(60, 3)
    first.slo(objective=0.05, share_over=0.05, burn_rate=5.0, setting=Setting(500, 0.002))
    first.breakers({2: "open", 1: "closed"})
    second = a_worker("w-2", predicted=40, invalid_json=0, lag={}, live=live)
    second.slo_events(40, 0)
    second.slo(objective=0.05, share_over=0.0, burn_rate=0.0, setting=Setting(2000, 0.005))
    second.breakers({2: "half_open"})
    urls = serve(first), serve(second)
    slo = status_json(capsys, "--url", *urls)["slo"]

    assert slo == {
        "objective_seconds": 0.05,
        "burn_rate": 5.0,  # the worst worker's
        "over_share": 0.05,
        "events_within": 97,
        "events_over": 3,
        "batch_size": [500, 2000],
        "fetch_wait_seconds": [0.002, 0.005],
        "breakers": {"1": "closed", "2": "open"},
    }
    assert main(["status", "--url", *urls]) == 0
    text = capsys.readouterr().out
    assert (
        "slo         p99 within 50 ms: burn 5.00x (5.00% of the window's events over); batch 500, fetch wait 2 ms"
        in text
    )
    assert "breakers    v1 closed, v2 open (the fallback serves their events)" in text
