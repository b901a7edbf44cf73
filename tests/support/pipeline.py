"""Shared test helpers: pipeline."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.streams.worker.app import run_worker
from tests.support import SPECS, key_environ


def make_settings(tmp_path: Path, bootstrap: str, unique: str, **extra: str) -> settings_module.Settings:
    return settings_module.load(environ=pipeline_environ(tmp_path, bootstrap, unique, **extra))


_TEMPLATE_DB: Path | None = None


def empty_registry(path: Path) -> None:
    """An MLflow SQLite database at `path` with its schema already made: a copy of one made once per session
    (the schema's migrations take seconds, and every pipeline here would otherwise run them)."""
    global _TEMPLATE_DB
    if _TEMPLATE_DB is None:
        from mlflow.tracking import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="driftloop-mlflow-template-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()
        _TEMPLATE_DB = template
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE_DB, path)


def pipeline_environ(
    tmp_path: Path, bootstrap: str, unique: str, spec_file: Path = SPECS / "fraud.yaml", **extra: str
) -> dict[str, str]:
    """Settings for an isolated pipeline on the shared broker: own spec name (so own internal topics),
    own public topics, own data dir, local SQLite MLflow registry (its schema copied from a template)."""
    if "MLFLOW_TRACKING_URI" not in extra and not (tmp_path / "mlflow.db").exists():
        empty_registry(tmp_path / "mlflow.db")
    spec = yaml.safe_load(spec_file.read_text())
    spec["name"] = f"fraud_{unique}"
    spec["model"]["name"] = f"fraud_{unique}"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "DRIFTLOOP_DATA_DIR": str(tmp_path / "data"),
        "DRIFTLOOP_FEAST_REPO": str(tmp_path / "feature_repo"),
        "DRIFTLOOP_SPEC": str(spec_path),
        "DRIFTLOOP_METRICS_PORT": "0",
        **key_environ(),
        "DRIFTLOOP_PARTITIONS": "2",
        **{
            f"DRIFTLOOP_TOPIC_{name.upper()}": f"{name}-{unique}"
            for name in ("events", "outcomes", "predictions", "labeled", "drift", "audit")
        },
        **extra,
    }
    return environ


class RunningWorker:
    def __init__(self, settings: settings_module.Settings):
        self.settings = settings
        self.stop = threading.Event()
        self.port: int | None = None
        self.error: BaseException | None = None
        ready = threading.Event()

        def on_ready(port: int) -> None:
            self.port = port
            ready.set()

        def run() -> None:
            try:
                run_worker(settings, self.stop, on_ready=on_ready)
            except BaseException as exc:  # surfaced by the test, not lost in a thread
                self.error = exc
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(120), "worker did not start"
        if self.error:
            raise self.error

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error:
            raise self.error


def consume_all(bootstrap: str, topics: list[str], until, timeout: float) -> dict[str, list]:
    """Read topics from the start until until(records) is true or timeout; records by topic."""
    consumer = kafka.consumer(bootstrap, f"reader-{random.random()}")
    consumer.subscribe(topics)
    records: dict[str, list] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            for m in consumer.consume(5000, timeout=0.5):
                if m.error() is None:
                    records[m.topic()].append(m)
    finally:
        consumer.close()
    return records


def start_worker_process(environ: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "driftloop.cli", "worker"],
        env={**os.environ, **environ},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_log(log: Path, text: str, occurrences: int = 1, timeout: float = 120) -> None:
    """Wait until a process's log holds `text` that many times; fail with the log's tail if it never does."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) < occurrences:
        assert time.monotonic() < deadline, f"{text!r} not logged {occurrences} times: {log.read_text()[-2000:]}"
        time.sleep(0.1)
