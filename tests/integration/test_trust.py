"""Only what driftloop signed is ever deserialised, and only signed control records are acted on.

One `driftloop up` stack (embedded broker, real MLflow server, worker, control plane, retrain worker), attacked
the way an outside tester did: through MLflow's REST API and the broker, with no key. The malicious model is
a pickle whose unpickling runs a command that creates a marker file.
"""

from __future__ import annotations

import json
import pickle
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from driftloop.models import registry
from driftloop.models.bootstrap import placeholder_spec
from driftloop.models.checksum import directory_checksum
from driftloop.models.flavors import new_model
from driftloop.streams import contracts

from driftloop import kafka
from driftloop.settings import DEMO_SPEC
from driftloop.signing import create_key, load_key
from driftloop.spec import load_spec
from tests.support.models import TRAIN, TRAIN_Y
from tests.support.stack import driftloop_command, stack_env, wait_for_line
from tests.support.trust import RunsACommand

SPEC = load_spec(DEMO_SPEC)
NAME = SPEC.model.name




class Stack:
    def __init__(self, tmp: Path):
        self.tmp, self.env = tmp, stack_env(tmp)
        self.process = subprocess.Popen(driftloop_command("up"), env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
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
        run = self.rest("POST", "mlflow/runs/create",
                        json={"experiment_id": experiment["experiment"]["experiment_id"]})["run"]["info"]
        root = run["artifact_uri"].removeprefix("mlflow-artifacts:/")
        files = {"evil/artifacts/model/model.pkl": pickle.dumps(RunsACommand(self.marker)),
                 "evil/artifacts/reference.parquet": b"PAR1 not a parquet file"}
        for path, data in files.items():
            self.rest("PUT", f"mlflow-artifacts/artifacts/{root}/{path}", data=data)
        version = self.rest("POST", "mlflow/model-versions/create", json={
            "name": NAME, "source": f"{run['artifact_uri']}/evil", "run_id": run["run_id"],
            "tags": [{"key": k, "value": v} for k, v in tags.items()]})["model_version"]["version"]
        return int(version)

    def move_champion(self, version: int) -> None:
        self.rest("POST", "mlflow/registered-models/alias", json={"name": NAME, "alias": "champion",
                                                                  "version": str(version)})

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def _metric(url: str, name: str, labels: str = "") -> float | None:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return None if found is None else float(found.group(1))


def _champion_served(url: str) -> float | None:
    return _metric(url, "driftloop_model_version", f'{{model="{NAME}",variant="champion"}}')


def _eventually(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout}s: {what}")


def _refusals(audit: list[dict], version: int, actor: str) -> list[dict]:
    return [r for r in audit if r["action"] == "model_refused" and r["version"] == version and r["actor"] == actor]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack, with a signed v2 promoted by the operator over the bootstrap placeholder v1 (so `previous` is v1)."""
    stack = Stack(tmp_path_factory.mktemp("trust"))
    try:
        river = placeholder_spec(SPEC)
        model = new_model(river)
        model.learn(TRAIN[:500], TRAIN_Y[:500])
        signed = registry.register(model, river, tracking_uri=stack.url, reference_rows=TRAIN[:200],
                                   key=load_key(stack.key_file))
        assert signed.version == 2
        promoted = stack.cli("promote", "2")
        assert promoted.returncode == 0, promoted.stderr
        _eventually(lambda: _champion_served(stack.metrics) == 2, 60, "the worker serving v2")
        yield stack
    finally:
        stack.stop()


def test_up_creates_an_owner_only_key_and_the_payload_really_runs_a_command(stack, tmp_path):
    assert "created the signing key" in stack.output
    assert stack.key_file.stat().st_mode & 0o777 == 0o600
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(RunsACommand(probe)))  # what a loader without verification would do
    assert probe.exists()


def test_a_malicious_champion_set_by_one_rest_call_never_runs_and_is_refused_once(stack):
    evil = stack.forge_version({"driftloop.flavor": "river"})
    stack.move_champion(evil)
    # The worker polls every 2 s and the control plane every 1 s: both had ~6 tries to run it.
    _eventually(lambda: _refusals(stack.audit(), evil, "worker") and _refusals(stack.audit(), evil, "control"),
                30, "model_refused from the worker and the control plane")
    time.sleep(12)
    audit = stack.audit()
    assert not stack.marker.exists()
    worker, control = _refusals(audit, evil, "worker"), _refusals(audit, evil, "control")
    assert len(worker) == 1 and len(control) == 1, (worker, control)
    assert "unsigned" in worker[0]["reason"] and worker[0]["details"]["serving"] == 2
    assert _champion_served(stack.metrics) == 2  # still serving the signed champion
    assert _metric(stack.metrics, "driftloop_models_refused_total") == 1
    assert stack.aliases()["champion"] == evil  # refused, not repaired behind the operator's back


def test_promote_and_rollback_refuse_a_version_with_a_copied_signature_and_move_nothing(stack):
    signed_tags = registry.version_tags(NAME, 2, tracking_uri=stack.url)
    forged = stack.forge_version({k: v for k, v in signed_tags.items() if k.startswith("driftloop.")})
    before = stack.aliases()
    for command in (("promote", str(forged)), ("rollback", "--to", str(forged))):
        result = stack.cli(*command)
        assert result.returncode == 2, result
        assert f"v{forged}: bad signature" in result.stderr and "no alias moved" in result.stderr
        assert stack.aliases() == before
    assert not stack.marker.exists()
    assert len(_refusals(stack.audit(), forged, "operator")) == 2


def test_a_worker_started_while_the_champion_is_tampered_serves_previous_and_says_so(stack):
    evil = stack.forge_version({"driftloop.flavor": "river"})
    stack.move_champion(evil)
    assert stack.aliases()["previous"] == 1
    log = stack.tmp / "second-worker.log"
    with log.open("w") as stderr:
        worker = subprocess.Popen(driftloop_command("worker"), env=stack.env, stdout=subprocess.PIPE, stderr=stderr,
                                  text=True)
    try:
        ready = "".join(wait_for_line(worker, "metrics at", timeout=240))
        metrics = re.search(r"metrics at (\S+)", ready).group(1)
        _eventually(lambda: _champion_served(metrics) == 1, 30, "the new worker serving v1")
        assert f"champion v{evil} is refused" in log.read_text() and "serving v1 (previous) instead" in log.read_text()
        told = _eventually(lambda: [r for r in _refusals(stack.audit(), evil, "worker")
                                    if r["details"]["serving"] == 1], 30, "the new worker's model_refused")
        assert len(told) == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    assert not stack.marker.exists()


def test_forged_control_records_are_refused_audited_and_train_nothing(stack, tmp_path):
    versions = registry.versions(NAME, tracking_uri=stack.url)
    other_key = tmp_path / "other.key"
    create_key(other_key)
    warmup = contracts.retrain_request(request_id="forged-warmup", model_name=NAME, champion_version=1,
                                       reason="warmup", train_from=None, drift_report=None, current_rows=None)
    finished = contracts.audit(actor="retrain", action="challenger_set", model_name=NAME, reason="forged",
                               version=versions[0], details={"request_id": "forged-warmup"})
    producer = kafka.producer(stack.bootstrap)
    producer.produce("retrain-requests", warmup, NAME.encode())  # no signature at all
    producer.produce("retrain-requests", warmup, NAME.encode(),  # signed, but not with the stack's key
                     headers=contracts.signature_headers(load_key(other_key), "retrain-requests", warmup))
    producer.produce("audit", finished, NAME.encode())
    assert producer.flush(10) == 0

    refused = _eventually(lambda: [r for r in stack.audit() if r["action"] == "request_refused"]
                          if len([r for r in stack.audit() if r["action"] == "request_refused"]) >= 3 else None,
                          60, "three request_refused records")
    assert sorted(r["actor"] for r in refused) == ["control", "retrain", "retrain"]
    time.sleep(5)
    audit = stack.audit()
    assert not [r for r in audit if r["actor"] == "retrain" and r["action"] in ("started", "registered", "promoted")]
    assert registry.versions(NAME, tracking_uri=stack.url) == versions and "challenger" not in stack.aliases()
