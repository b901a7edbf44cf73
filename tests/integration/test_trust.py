"""Only what driftloop signed is ever deserialised, and only signed control records are acted on.

One `driftloop up` stack (embedded broker, real MLflow server, worker, control plane, retrain worker), attacked
the way an outside tester did: through MLflow's REST API and the broker, with no key. The malicious model is
a pickle whose unpickling runs a command that creates a marker file.
"""

from __future__ import annotations

import pickle
import re
import signal
import subprocess
import time

import pytest

from driftloop import kafka
from driftloop.models import registry
from driftloop.models.bootstrap import placeholder_spec
from driftloop.models.flavors import new_model
from driftloop.signing import create_key, load_key
from driftloop.streams import contracts
from tests.support.models import TRAIN, TRAIN_Y
from tests.support.stack import driftloop_command, wait_for_line
from tests.support.trust import NAME, SPEC, RunsACommand, Stack, champion_served, eventually, metric_value


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
        signed = registry.register(
            model, river, tracking_uri=stack.url, reference_rows=TRAIN[:200], key=load_key(stack.key_file)
        )
        assert signed.version == 2
        promoted = stack.cli("promote", "2")
        assert promoted.returncode == 0, promoted.stderr
        eventually(lambda: champion_served(stack.metrics) == 2, 60, "the worker serving v2")
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
    # The worker polls every 2 s and the control plane every 1 s: after both refused it once, 6 s more give
    # them 3 and 6 more tries to run it or refuse it again.
    eventually(
        lambda: _refusals(stack.audit(), evil, "worker") and _refusals(stack.audit(), evil, "control"),
        30,
        "model_refused from the worker and the control plane",
    )
    time.sleep(6)
    audit = stack.audit()
    assert not stack.marker.exists()
    worker, control = _refusals(audit, evil, "worker"), _refusals(audit, evil, "control")
    assert len(worker) == 1 and len(control) == 1, (worker, control)
    assert "unsigned" in worker[0]["reason"] and worker[0]["details"]["serving"] == 2
    assert champion_served(stack.metrics) == 2  # still serving the signed champion
    assert metric_value(stack.metrics, "driftloop_models_refused_total") == 1
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
        worker = subprocess.Popen(
            driftloop_command("worker"), env=stack.env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        ready = "".join(wait_for_line(worker, "metrics at", timeout=240))
        metrics = re.search(r"metrics at (\S+)", ready).group(1)
        eventually(lambda: champion_served(metrics) == 1, 30, "the new worker serving v1")
        assert f"champion v{evil} is refused" in log.read_text() and "serving v1 (previous) instead" in log.read_text()
        told = eventually(
            lambda: [r for r in _refusals(stack.audit(), evil, "worker") if r["details"]["serving"] == 1],
            30,
            "the new worker's model_refused",
        )
        assert len(told) == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    assert not stack.marker.exists()


def test_forged_control_records_are_refused_audited_and_train_nothing(stack, tmp_path):
    versions = registry.versions(NAME, tracking_uri=stack.url)
    other_key = tmp_path / "other.key"
    create_key(other_key)
    warmup = contracts.retrain_request(
        request_id="forged-warmup",
        model_name=NAME,
        champion_version=1,
        reason="warmup",
        train_from=None,
        drift_report=None,
        current_rows=None,
    )
    finished = contracts.audit(
        actor="retrain",
        action="challenger_set",
        model_name=NAME,
        reason="forged",
        version=versions[0],
        details={"request_id": "forged-warmup"},
    )
    producer = kafka.producer(stack.bootstrap)
    producer.produce("retrain-requests", warmup, NAME.encode())  # no signature at all
    producer.produce(
        "retrain-requests",
        warmup,
        NAME.encode(),  # signed, but not with the stack's key
        headers=contracts.signature_headers(load_key(other_key), "retrain-requests", warmup),
    )
    producer.produce("audit", finished, NAME.encode())
    assert producer.flush(10) == 0

    refused = eventually(
        lambda: (
            [r for r in stack.audit() if r["action"] == "request_refused"]
            if len([r for r in stack.audit() if r["action"] == "request_refused"]) >= 3
            else None
        ),
        60,
        "three request_refused records",
    )
    assert sorted(r["actor"] for r in refused) == ["control", "retrain", "retrain"]
    time.sleep(3)  # both requests were refused: room for a wrongly started retraining to show
    audit = stack.audit()
    assert not [r for r in audit if r["actor"] == "retrain" and r["action"] in ("started", "registered", "promoted")]
    assert registry.versions(NAME, tracking_uri=stack.url) == versions and "challenger" not in stack.aliases()
