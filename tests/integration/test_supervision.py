"""`driftloop up` keeps its stack running as a user sees it: kill -9 a child and it comes back.

One stack serves the restart tests, in order, and is ended by the last one (a crash loop); a
second stack is ended by killing its broker. Each test prints how long its children took from
the kill to being back (run with -s to see it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from driftloop import kafka
from driftloop.mlflow_server import http_ok
from tests.support.stack import README_EVENT, driftloop_command, stack_env, start_driftloop

MAX_RESTARTS = 2  # the crash-loop test needs MAX_RESTARTS + 1 exits of one child within 5 minutes
NAMES = {"worker": "worker", "control": "control plane", "retrain-worker": "retrain worker", "mlflow": "MLflow server"}


class Up:
    """`driftloop up` in the background, its stdout lines collected (with when they came) as they come."""

    def __init__(self, tmp_path: Path, **env: str):
        self.data = tmp_path / "data"
        self.env = stack_env(tmp_path, **env)
        self.process = start_driftloop("up", env=self.env)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for("stack is up", timeout=300)
        self.info = json.loads((self.data / "stack.json").read_text())

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, text: str, timeout: float, since: float = 0.0) -> float:
        """When the first line containing `text` came out after the moment `since`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if at >= since and text in line:
                    return at
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(
                    f"driftloop up exited ({self.process.returncode}) before {text!r}: "
                    f"{self.output()}{self.process.stderr.read()}"
                )
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} within {timeout}s; output: {self.output()}")

    def output(self, since: float = 0.0) -> str:
        return "\n".join(line for at, line in self.lines if at >= since)

    def child(self, label: str) -> psutil.Process:
        """The direct child of `driftloop up` that runs `label` (a driftloop command, mlflow or broker)."""
        found = self.find(label)
        assert found is not None, f"no {label} child of driftloop up"
        return found

    def find(self, label: str) -> psutil.Process | None:
        for child in psutil.Process(self.process.pid).children():
            command = command_line(child)
            if (
                command[-1:] == [label]
                or (label == "mlflow" and command[2:4] == ["mlflow", "server"])
                or (label == "broker" and "tansu" in command[0])
            ):
                return child
        return None

    def kill(self, *labels: str) -> float:
        """kill -9 these children at once; returns when."""
        children = [self.child(label) for label in labels]
        killed_at = time.monotonic()
        for child in children:
            child.send_signal(signal.SIGKILL)
        return killed_at

    def status(self) -> dict:
        done = subprocess.run(
            driftloop_command("status", "--json"), env=self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def audit(self, action: str) -> list[dict]:
        return [
            record
            for record in map(json.loads, kafka.read_topic(self.info["bootstrap"], "audit"))
            if record["action"] == action
        ]

    def log(self, label: str) -> Path:
        return self.data / "logs" / f"{label}.log"

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=120)


def command_line(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline() or [""]
    except psutil.Error:  # exited meanwhile
        return [""]


def gone(processes: list[psutil.Process]) -> bool:
    return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in processes)


def last_words(up: Up) -> str:
    """The one line `driftloop up` printed on stderr when it stopped (the lines before are start-up logging)."""
    stderr = up.process.stderr.read()
    assert "Traceback" not in stderr and stderr.count("driftloop: error") == 1, stderr
    return stderr.strip().splitlines()[-1]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    up = Up(tmp_path_factory.mktemp("supervised"), DRIFTLOOP_MAX_RESTARTS=str(MAX_RESTARTS))
    try:
        yield up
    finally:
        up.stop()


def a_prediction_for(up: Up, event_id: str, timeout: float) -> dict:
    """Produce an event as any client would and read its prediction back."""
    producer = kafka.producer(up.info["bootstrap"])
    producer.produce("events", README_EVENT.replace(b'"e-1"', f'"{event_id}"'.encode()), b"u-42")
    assert producer.flush(10) == 0
    reader = kafka.consumer(up.info["bootstrap"], f"reader-{event_id}")
    reader.subscribe(["predictions"])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in reader.consume(10, timeout=0.5):
                if message.error() is None and json.loads(message.value())["event_id"] == event_id:
                    return json.loads(message.value())
    finally:
        reader.close()
    raise AssertionError(f"no prediction for {event_id} within {timeout}s")


def test_killed_workers_come_back_audited_and_counted(stack):
    killed = {label: stack.child(label).pid for label in ("worker", "control", "retrain-worker")}
    killed_at = stack.kill(*killed)
    back = {}
    for label in killed:
        stack.wait_for(
            f"{NAMES[label]} exited (signal 9); restarting in 1s (restart 1; log: {stack.log(label)})",
            timeout=30,
            since=killed_at,
        )
        back[label] = stack.wait_for(f"{NAMES[label]} is back: ready", timeout=240, since=killed_at) - killed_at
    assert all(stack.child(label).pid != pid for label, pid in killed.items())
    # The worker kept its metrics port, so the URL in stack.json is still the one that answers, and it scores.
    assert json.loads((stack.data / "stack.json").read_text())["metrics_urls"] == stack.info["metrics_urls"]
    assert http_ok(stack.info["metrics_urls"][0])
    assert a_prediction_for(stack, "after-the-kill", timeout=120)["variant"] == "champion"
    scored = time.monotonic() - killed_at

    restarts = {record["details"]["child"]: record for record in stack.audit("child_restarted")}
    assert set(restarts) == set(killed)
    for label, record in restarts.items():
        assert record["actor"] == "supervisor"
        assert record["details"] == {
            "child": label,
            "exit_code": None,
            "signal": 9,
            "exit": "signal 9",
            "restarts": 1,
            "log": str(stack.log(label)),
        }
    children = stack.status()["supervisor"]["children"]
    assert children == {
        "broker": {"up": True, "restarts": 0},
        "mlflow": {"up": True, "restarts": 0},
        "worker": {"up": True, "restarts": 1},
        "control": {"up": True, "restarts": 1},
        "retrain-worker": {"up": True, "restarts": 1},
    }
    print(
        "\nkilled together, back (ready) after: "
        + ", ".join(f"{label} {s:.1f}s" for label, s in back.items())
        + f"; the worker's first prediction after the kill {scored:.1f}s"
    )


def test_a_killed_mlflow_comes_back_on_its_port_and_the_others_ride_it_out(stack):
    others = {label: stack.child(label).pid for label in ("worker", "control", "retrain-worker")}
    control_log = stack.log("control").read_text()
    killed_at = stack.kill("mlflow")
    stack.wait_for(
        f"MLflow server exited (signal 9); restarting in 1s (restart 1; log: {stack.log('mlflow')})",
        timeout=30,
        since=killed_at,
    )
    back = stack.wait_for("MLflow server is back: ready", timeout=240, since=killed_at) - killed_at
    assert http_ok(f"{stack.info['mlflow_tracking_uri']}/health")
    # The control plane noticed the outage on its 1 s tick and carried on: it was not restarted.
    wait_until(
        lambda: "model registry reachable again" in stack.log("control").read_text()[len(control_log) :],
        timeout=60,
        what="the control plane reaching the registry again",
    )
    assert "model registry unreachable" in stack.log("control").read_text()[len(control_log) :]
    assert {label: stack.child(label).pid for label in others} == others
    assert stack.status()["supervisor"]["children"]["mlflow"] == {"up": True, "restarts": 1}
    assert [r["details"]["child"] for r in stack.audit("child_restarted")].count("mlflow") == 1
    print(f"\nMLflow back (ready) {back:.1f}s after the kill")


def test_a_worker_restarted_while_mlflow_does_not_answer_waits_for_it(stack):
    # A stopped MLflow accepts connections and answers nothing, as a busy or restarting one can.
    mlflow_group = os.getpgid(stack.child("mlflow").pid)
    os.killpg(mlflow_group, signal.SIGSTOP)
    try:
        worker_log = stack.log("worker").stat().st_size
        killed_at = stack.kill("worker")
        stack.wait_for("worker exited (signal 9); restarting in", timeout=30, since=killed_at)
        wait_until(
            lambda: "finding the champion: MLflow at" in stack.log("worker").read_text()[worker_log:],
            timeout=180,
            what="the restarted worker waiting for MLflow",
        )
    finally:
        os.killpg(mlflow_group, signal.SIGCONT)
    back = stack.wait_for("worker is back: ready", timeout=240, since=killed_at) - killed_at
    assert "restart 3" not in stack.output(since=killed_at)
    assert stack.status()["supervisor"]["children"]["worker"] == {"up": True, "restarts": 2}
    print(f"\nworker back (ready) {back:.1f}s after the kill, MLflow frozen until it waited")


def test_a_crash_looping_child_stops_the_stack_with_one_line(stack):
    # Every worker the supervisor starts is killed at once: MAX_RESTARTS + 1 exits within 5 minutes.
    descendants, killed = set(stack.descendants()), set()
    deadline = time.monotonic() + 120
    while stack.process.poll() is None and time.monotonic() < deadline:
        try:
            descendants.update(stack.descendants())
            worker = stack.find("worker")
        except psutil.NoSuchProcess:  # driftloop up has just exited
            break
        if worker is not None and worker.pid not in killed:
            worker.send_signal(signal.SIGKILL)
            killed.add(worker.pid)
        time.sleep(0.05)
    stack.process.wait(timeout=120)
    assert stack.process.returncode == 2
    assert last_words(stack) == (
        f"driftloop: error: worker is crash-looping: it exited (signal 9) after "
        f"{MAX_RESTARTS} restarts in the last 5 minutes (DRIFTLOOP_MAX_RESTARTS={MAX_RESTARTS}); "
        f"stopping the stack (log: {stack.log('worker')})"
    )
    assert gone(list(descendants))
    assert not (stack.data / "stack.json").exists()


def test_a_killed_broker_ends_the_stack_with_why_and_leaves_no_process(tmp_path):
    up = Up(tmp_path)
    try:
        descendants = up.descendants()
        killed_at = up.kill("broker")
        up.process.wait(timeout=120)
        stopped = time.monotonic() - killed_at
        error = last_words(up)
    finally:
        up.stop()
    assert up.process.returncode == 2
    assert error == (
        "driftloop: error: embedded broker (tansu) exited (signal 9); it held every record in memory, "
        f"so they are gone and no restart brings them back: stopping the stack (log: {up.log('broker')})"
    )
    assert "restarting" not in up.output()
    assert gone(descendants)
    assert not (up.data / "stack.json").exists()
    print(f"\nthe stack stopped {stopped:.1f}s after its broker was killed")
