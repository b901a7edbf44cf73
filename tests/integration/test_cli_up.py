"""`driftloop up` as a user runs it: stack comes up, answers, and SIGTERM leaves no process behind."""

import json
import signal
import subprocess
import time
import urllib.request

import psutil
import pytest

from driftloop import kafka
from tests.support.stack import README_EVENT, driftloop_command, stack_env, start_driftloop, wait_for_line


def _listening(process: psutil.Process) -> list[tuple[str, str, int]]:
    """(command, address, port) of every listening TCP socket of the process and its descendants."""
    found = []
    for member in [process, *process.children(recursive=True)]:
        try:
            command = " ".join(member.cmdline()[:4])
            found += [
                (command, c.laddr.ip, c.laddr.port)
                for c in member.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
        except psutil.NoSuchProcess:  # a short-lived helper process that exited meanwhile
            continue
    return found


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def test_up_serves_broker_mlflow_topics_and_stops_on_sigterm(tmp_path):
    env = stack_env(tmp_path, DRIFTLOOP_PARTITIONS="")  # unset: the embedded broker's default, one partition
    process = start_driftloop("up", env=env)
    try:
        wait_for_line(process, "stack is up", timeout=240)
        info = json.loads((tmp_path / "data" / "stack.json").read_text())
        descendants = psutil.Process(process.pid).children(recursive=True)
        assert len(descendants) >= 2  # broker and MLflow (and MLflow's worker)
        # Every server the stack started listens on loopback only (DRIFTLOOP_BIND_HOST's default).
        listening = _listening(psutil.Process(process.pid))
        assert {_port(info["bootstrap"]), _port(info["mlflow_tracking_uri"]), _port(info["metrics_urls"][0])} <= {
            port for _, _, port in listening
        }, listening
        assert {address for _, address, _ in listening} == {"127.0.0.1"}, listening

        assert kafka.broker_answers(info["bootstrap"])
        topics = kafka.admin(info["bootstrap"]).list_topics(timeout=10).topics
        assert {
            "events",
            "events.dlq",
            "outcomes",
            "predictions",
            "labeled",
            "drift",
            "audit",
            "retrain-requests",
        } <= set(topics)
        assert len(topics["events"].partitions) == 1
        with urllib.request.urlopen(info["mlflow_tracking_uri"], timeout=10) as ui:
            assert ui.status == 200 and b"<html" in ui.read().lower()
        assert (tmp_path / "repo" / "feature_store.yaml").exists()

        # The worker it started scores what any client produces, and dead-letters what it cannot score.
        producer = kafka.producer(info["bootstrap"])
        producer.produce("events", README_EVENT, b"u-42")
        producer.produce("events", b'{"event_id": "e-2"}', b"u-42")
        assert producer.flush(10) == 0
        reader = kafka.consumer(info["bootstrap"], "readme-reader")
        reader.subscribe(["predictions", "events.dlq"])
        seen = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            for message in reader.consume(10, timeout=0.5):
                if message.error() is None:
                    seen[message.topic()] = json.loads(message.value())
        reader.close()
        assert seen["predictions"]["event_id"] == "e-1" and seen["predictions"]["variant"] == "champion"
        assert seen["events.dlq"]["reason"] == "missing_field"
        # The worker's own topics (join, changelogs, observations) follow the stack's count, not Kafka's default.
        partitions = {
            name: len(topic.partitions)
            for name, topic in kafka.admin(info["bootstrap"]).list_topics(timeout=10).topics.items()
        }
        assert "driftloop-card_fraud-pending" in partitions and set(partitions.values()) == {1}, partitions
        status = subprocess.run(
            driftloop_command("status", "--json"), env=env, capture_output=True, text=True, timeout=30
        )
        assert status.returncode == 0, status.stderr
        assert info["metrics_urls"] and json.loads(status.stdout)
        # What `driftloop up` supervises, all up and never restarted.
        assert json.loads(status.stdout)["supervisor"]["children"] == {
            child: {"up": True, "restarts": 0} for child in ("broker", "mlflow", "worker", "control", "retrain-worker")
        }
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "SIGTERM received: stopped everything" in out
    for child in descendants:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child
    assert not (tmp_path / "data" / "stack.json").exists()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "no Kafka broker answered a metadata request at 127.0.0.1:1"),
        ({"DRIFTLOOP_PARTITIONS": "many"}, "invalid setting DRIFTLOOP_PARTITIONS='many'"),
        ({"DRIFTLOOP_TOPICS": "x"}, "unknown setting DRIFTLOOP_TOPICS"),
        (
            {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"},
            "MLflow at MLFLOW_TRACKING_URI=http://127.0.0.1:1 does not answer",
        ),
    ],
)
def test_bad_configuration_is_one_line_and_non_zero(tmp_path, kafka_bootstrap, env, message):
    if "MLFLOW_TRACKING_URI" in env:
        env = {**env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    started = time.monotonic()
    done = subprocess.run(
        driftloop_command("up"), env=stack_env(tmp_path, **env), capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [next(line for line in done.stderr.splitlines() if message in line)]
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60


def test_taken_broker_port_is_one_line(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            driftloop_command("up"),
            env=stack_env(tmp_path, DRIFTLOOP_BROKER_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"driftloop: error: port {port} on 127.0.0.1 is taken; "
        f"set DRIFTLOOP_BROKER_PORT to another port (0 picks a free one)"
    )


def test_bind_host_opens_the_servers_to_other_hosts(tmp_path):
    """As in a container: DRIFTLOOP_BIND_HOST=0.0.0.0 puts the broker and MLflow on every interface."""
    env = stack_env(tmp_path, DRIFTLOOP_BIND_HOST="0.0.0.0")
    broker = start_driftloop("broker", env=env)
    mlflow = start_driftloop("mlflow", env=env)
    try:
        bootstrap = wait_for_line(broker, "bootstrap address", timeout=60)[-1].rsplit(" ", 1)[-1].strip()
        url = wait_for_line(mlflow, "MLflow UI at", timeout=180)[-1].rsplit(" ", 1)[-1].strip()
        assert kafka.broker_answers(bootstrap)  # reached on loopback, as clients on this host do
        with urllib.request.urlopen(f"{url}/health", timeout=10) as health:
            assert health.status == 200
        listening = _listening(psutil.Process(broker.pid)) + _listening(psutil.Process(mlflow.pid))
        assert {_port(bootstrap), _port(url)} <= {port for _, _, port in listening}, listening
        assert {address for _, address, _ in listening} == {"0.0.0.0"}, listening
    finally:
        for process in (broker, mlflow):
            process.send_signal(signal.SIGINT)
        for process in (broker, mlflow):
            process.communicate(timeout=60)


def test_broker_command_prints_bootstrap_and_stops(tmp_path):
    process = start_driftloop("broker", env=stack_env(tmp_path))
    try:
        lines = wait_for_line(process, "bootstrap address", timeout=60)
        bootstrap = lines[-1].rsplit(" ", 1)[-1].strip()
        assert kafka.broker_answers(bootstrap)
        children = psutil.Process(process.pid).children(recursive=True)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 0
    assert all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)
