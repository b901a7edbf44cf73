"""Shared test helpers: trust."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import requests

from driftloop import kafka
from driftloop.models import registry
from driftloop.models.checksum import directory_checksum
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec
from tests.support.stack import driftloop_command, stack_env, start_driftloop, wait_for_line

SPEC = load_spec(DEMO_SPEC)


class RunsACommand:
    """Unpickling this runs `touch <marker>`: what the tester's model.pkl did."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


NAME = SPEC.model.name


class Stack:
    def __init__(self, tmp: Path):
        self.tmp, self.env = tmp, stack_env(tmp)
        self.process = start_driftloop("up", env=self.env)
        self.output = "".join(wait_for_line(self.process, "stack is up", timeout=300))
        info = json.loads((tmp / "data" / "stack.json").read_text())
        self.bootstrap, self.url, self.metrics = info["bootstrap"], info["mlflow_tracking_uri"], info["metrics_urls"][0]
        self.key_file = tmp / "data" / "signing.key"
        self.marker = tmp / "the-command-ran"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(driftloop_command(*args), env=self.env, capture_output=True, text=True, timeout=180)

    def audit(self) -> list[dict]:
        return kafka.read_topic(self.bootstrap, "audit", decode=json.loads)

    def aliases(self) -> dict[str, int]:
        return registry.aliases(NAME, tracking_uri=self.url)

    def rest(self, method: str, path: str, **kwargs) -> dict:
        response = requests.request(method, f"{self.url}/api/2.0/{path}", timeout=30, **kwargs)
        assert response.ok, response.text
        return response.json() if response.content else {}

    def forge_version(self, tags: dict[str, str]) -> int:
        """Register, with REST calls only, a version whose model.pkl runs a command, under `tags` plus a
        `driftloop.checksum` that matches it."""
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "model.pkl").write_bytes(pickle.dumps(RunsACommand(self.marker)))
            tags = {**tags, "driftloop.checksum": directory_checksum(tmp)}
        experiment = self.rest("GET", "mlflow/experiments/get-by-name", params={"experiment_name": SPEC.name})
        run = self.rest(
            "POST", "mlflow/runs/create", json={"experiment_id": experiment["experiment"]["experiment_id"]}
        )["run"]["info"]
        root = run["artifact_uri"].removeprefix("mlflow-artifacts:/")
        files = {
            "evil/artifacts/model/model.pkl": pickle.dumps(RunsACommand(self.marker)),
            "evil/artifacts/reference.parquet": b"PAR1 not a parquet file",
        }
        for path, data in files.items():
            self.rest("PUT", f"mlflow-artifacts/artifacts/{root}/{path}", data=data)
        version = self.rest(
            "POST",
            "mlflow/model-versions/create",
            json={
                "name": NAME,
                "source": f"{run['artifact_uri']}/evil",
                "run_id": run["run_id"],
                "tags": [{"key": k, "value": v} for k, v in tags.items()],
            },
        )["model_version"]["version"]
        return int(version)

    def move_champion(self, version: int) -> None:
        self.rest(
            "POST", "mlflow/registered-models/alias", json={"name": NAME, "alias": "champion", "version": str(version)}
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def metric_value(url: str, name: str, labels: str = "") -> float | None:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return None if found is None else float(found.group(1))


def champion_served(url: str) -> float | None:
    return metric_value(url, "driftloop_model_version", f'{{model="{NAME}",variant="champion"}}')


def eventually(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout}s: {what}")
