"""The Grafana dashboard against a real Prometheus: Debian's `prometheus` scrapes a running `driftloop up --demo`
(its worker, its control plane and its own supervisor metrics) and answers every query of
deploy/grafana/dashboards/driftloop.json with series.

The stack runs the demo spec on a River model with a retraining scheduled every few thousand events, so
that within minutes there is a finished retraining and a canary trial to show; the test adds what a healthy
demo stream lacks: dead letters, unseen categories, missing values and an unreadable `labeled` record.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from driftloop import kafka
from driftloop.settings import DEMO_SPEC
from tests.support.dashboards import dashboard_queries
from tests.support.stack import stack_env, start_driftloop, wait_for_line

PROMETHEUS = shutil.which("prometheus")
RETRAIN_FINISHED = ("challenger_set", "rejected", "retrain_failed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _hostport(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _spec(path) -> None:
    """The demo spec with an online model that starts cold and a retraining every few thousand events."""
    document = yaml.safe_load(DEMO_SPEC.read_text())
    document["model"].update(flavor="river", estimator="logistic_regression")
    document["drift"].update(schedule_every="4000 events", cooldown="30s")
    document["retrain"] = {"min_rows": 300, "window_events": 3000}
    document["canary"].update(min_samples=100, max_samples=2000)
    path.write_text(yaml.safe_dump(document))


class Prometheus:
    def __init__(self, tmp, targets: dict[str, str]):
        self.port = _free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "prometheus.log", "w"),
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            assert self.process.poll() is None and time.monotonic() < deadline, (tmp / "prometheus.log").read_text()
            time.sleep(0.5)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _trouble(bootstrap: str) -> None:
    """What a healthy demo stream lacks: a dead letter, an unseen category, a missing optional value, and a
    `labeled` record nobody can read."""
    producer = kafka.producer(bootstrap)
    producer.produce("events", b"not json", b"u-1")
    producer.produce(
        "events",
        json.dumps(
            {
                "event_id": f"odd-{time.time_ns()}",
                "user_id": "u-1",
                "event_time": time.time() - 5,
                "amount": 12.5,
                "merchant_category": "space_travel",
                "country": "NL",
                "channel": "web",
                "card_present": False,
            }
        ).encode(),
        b"u-1",
    )
    producer.produce("labeled", b'{"not": "a labeled record"}', b"u-1")
    assert producer.flush(10) == 0


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed (.ci/run installs it)")
@pytest.mark.timeout(900)
def test_every_dashboard_query_returns_series_from_a_real_prometheus(tmp_path):
    spec = tmp_path / "spec.yaml"
    _spec(spec)
    env = stack_env(tmp_path, DRIFTLOOP_SPEC=str(spec))
    stack = start_driftloop("up", "--demo", "--demo-rate", "800", env=env)
    prometheus = None
    try:
        wait_for_line(stack, "stack is up", timeout=300)
        info = json.loads((tmp_path / "data" / "stack.json").read_text())
        targets = {
            "driftloop-worker": _hostport(info["metrics_urls"][0]),
            "driftloop-control": _hostport(info["control_metrics_url"]),
            "driftloop-up": _hostport(info["supervisor_metrics_url"]),
        }
        prometheus = Prometheus(tmp_path, targets)

        deadline = time.monotonic() + 420
        while True:  # until a retraining has finished, with some trouble in the stream meanwhile
            _trouble(info["bootstrap"])
            audit = kafka.read_topic(info["bootstrap"], "audit", decode=json.loads)
            if any(r["actor"] == "retrain" and r["action"] in RETRAIN_FINISHED for r in audit):
                break
            assert time.monotonic() < deadline, [(r["actor"], r["action"]) for r in audit]
            time.sleep(2)
        up = {sample["metric"]["job"]: sample["value"][1] for sample in prometheus.query("up")}
        assert up == dict.fromkeys(targets, "1"), up

        queries = dashboard_queries()
        empty: dict[str, str] = {}
        answered_by = time.monotonic() + 60  # the last trouble and the last retraining need a few scrapes
        for title, expr in queries:
            while not prometheus.query(expr):
                if time.monotonic() > answered_by:
                    empty[title] = expr
                    break
                _trouble(info["bootstrap"])
                time.sleep(2)
        assert not empty, f"{len(empty)} of {len(queries)} dashboard queries returned no series: {empty}"
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.send_signal(signal.SIGTERM)
        stack.communicate(timeout=90)
