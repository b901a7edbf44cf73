"""The whole adaptive loop, unattended, on the embedded stack, driven by the demo's drifting stream
(at 800 events/s and with an earlier drift onset, to keep CI short): the warm-up placeholder is replaced
by the first trained model; then drift -> detection -> retraining -> challenger -> canary trial ->
promotion, with the registry, the audit trail and the demo's timeline agreeing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from driftloop import kafka
from tests.support.stack import driftloop_command, stack_env, start_driftloop, wait_for_line

VERDICTS = ("promoted", "rolled_back")
ONSET = 75_000  # the 24 h windows fill at ~43,200 events, the first model trains on the 5,000 outcomes after


def _audit_until_verdict(bootstrap: str, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        audit = [json.loads(v) for v in kafka.read_topic(bootstrap, "audit")]
        if any(r["actor"] == "promotion" and r["action"] in VERDICTS for r in audit):
            return audit
        time.sleep(1)
    raise AssertionError(f"no canary verdict within {timeout}s; audit: {[(r['actor'], r['action']) for r in audit]}")


def _model_version_tags(tracking_uri: str, version: int) -> dict[str, str]:
    url = f"{tracking_uri}/api/2.0/mlflow/model-versions/get?name=card_fraud&version={version}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return {t["key"]: t["value"] for t in json.loads(response.read())["model_version"]["tags"]}


@pytest.mark.timeout(900)
def test_the_first_model_replaces_the_placeholder_then_a_concept_drift_is_retrained_and_promoted(tmp_path):
    env = stack_env(tmp_path)
    stack = start_driftloop("up", env=env)
    demo = None
    try:
        wait_for_line(stack, "stack is up", timeout=300)
        info = json.loads((tmp_path / "data" / "stack.json").read_text())
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftloop.load.demo",
                "--rate",
                "800",
                "--onset",
                str(ONSET),
                "--timeout",
                "300",
                "--after-promotion",
                "5",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_line(demo, f"drift onset: event {ONSET:,}", timeout=300)
        audit = _audit_until_verdict(info["bootstrap"], timeout=300)
        uri = info["mlflow_tracking_uri"]

        # the warm-up: the cold-start placeholder v1 served until the first ONNX model replaced it
        assert _model_version_tags(uri, 1)["driftloop.placeholder"] == "warmup"
        warmup = next(r for r in audit if r["action"] == "retrain_triggered")
        assert warmup["details"]["reason_code"] == "warmup", warmup
        first = next(r for r in audit if (r["actor"], r["action"]) == ("retrain", "promoted"))
        assert first["details"]["from"]["champion"] == 1 and first["details"]["to"]["previous"] == 1
        first_model = first["version"]
        assert _model_version_tags(uri, first_model)["driftloop.flavor"] == "onnx"

        # the drift, after the first model
        later = audit[audit.index(first) + 1 :]
        actions = [(r["actor"], r["action"]) for r in later]
        order = [
            ("trigger", "retrain_triggered"),
            ("retrain", "started"),
            ("retrain", "registered"),
            ("retrain", "challenger_set"),
            ("promotion", "trial_started"),
            ("promotion", "promoted"),
        ]
        positions = [actions.index(step) for step in order]  # ValueError names a missing step
        assert positions == sorted(positions), actions
        triggered = next(r for r in later if r["action"] == "retrain_triggered")
        assert triggered["details"]["reason_code"] == "concept_drift"
        challenger = next(r for r in later if r["action"] == "challenger_set")["version"]
        verdict = next(r for r in later if r["actor"] == "promotion" and r["action"] in VERDICTS)
        assert (verdict["action"], verdict["version"]) == ("promoted", challenger), verdict

        url = f"{uri}/api/2.0/mlflow/registered-models/get?name=card_fraud"
        with urllib.request.urlopen(url, timeout=10) as response:
            model = json.loads(response.read())["registered_model"]
        aliases = {a["alias"]: int(a["version"]) for a in model["aliases"]}
        assert aliases == {"champion": challenger, "previous": first_model}
        wait_for_line(demo, "the loop adapted", timeout=120)
        assert (tmp_path / "data" / "demo-timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        status = subprocess.run(driftloop_command("status"), env=env, capture_output=True, text=True, timeout=60)
        assert f"champion v{aliases['champion']}" in status.stdout
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=30) == 0  # Ctrl-C ends the demo cleanly
    finally:
        if demo is not None and demo.poll() is None:
            demo.kill()
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=60)
        finally:
            if stack.poll() is None:
                stack.kill()
