"""`driftloop produce` and `driftloop tail` as a user runs them, against the test broker (the embedded
Tansu unless KAFKA_BOOTSTRAP_SERVERS or Docker says otherwise)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from driftloop import kafka


def _run(bootstrap: str, *args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DRIFTLOOP_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return subprocess.run(
        [sys.executable, "-m", "driftloop.cli", *args], input=stdin, env=env, capture_output=True, timeout=timeout
    )


@pytest.fixture
def topic(kafka_bootstrap, unique) -> str:
    name = f"console-{unique}"
    kafka.ensure_topics(kafka_bootstrap, [name], 1)
    return name


def test_produced_lines_come_back_from_tail_exactly(kafka_bootstrap, topic):
    lines = ['u-42:{"event_id":"e-1","amount":31.5}', 'u-7:{"note":"héllo: a colon"}', "u-8:", "nokey", ""]
    sent = _run(kafka_bootstrap, "produce", topic, "--key-separator", ":", stdin="\n".join(lines).encode() + b"\n")
    assert sent.returncode == 1, sent.stderr  # some lines could not be sent, and it says which
    assert sent.stderr.decode().splitlines() == [
        "driftloop: line 4: no key separator ':'; not sent",
        "driftloop: line 5: empty; not sent",
        f"driftloop: sent 3 records to {topic}; 2 lines not sent (above)",
    ]

    text = _run(kafka_bootstrap, "tail", topic, "--from-beginning", "-e", "--key-separator", ":")
    assert text.returncode == 0, text.stderr
    assert text.stdout.decode().splitlines() == lines[:3]  # the first ':' splits; the value keeps the rest
    records = _run(kafka_bootstrap, "tail", topic, "--from-beginning", "-n", "2", "--json")
    assert [json.loads(line) for line in records.stdout.decode().splitlines()] == [
        {
            "topic": topic,
            "partition": 0,
            "offset": 0,
            "timestamp_ms": pytest.approx(time.time() * 1000, abs=60_000),
            "key": "u-42",
            "value": '{"event_id":"e-1","amount":31.5}',
        },
        {
            "topic": topic,
            "partition": 0,
            "offset": 1,
            "timestamp_ms": pytest.approx(time.time() * 1000, abs=60_000),
            "key": "u-7",
            "value": '{"note":"héllo: a colon"}',
        },
    ]


def test_bytes_that_are_not_utf8_are_shown_not_dropped(kafka_bootstrap, topic):
    producer = kafka.producer(kafka_bootstrap)
    producer.produce(topic, b"\xff\xfe{", b"k")
    assert producer.flush(10) == 0
    text = _run(kafka_bootstrap, "tail", topic, "--from-beginning", "-e")
    assert text.stdout.decode() == "\\xff\\xfe{\n"
    record = json.loads(_run(kafka_bootstrap, "tail", topic, "--from-beginning", "-e", "--json").stdout)
    assert base64.b64decode(record["value_b64"]) == b"\xff\xfe{" and "value" not in record and record["key"] == "k"


def test_tail_from_the_end_shows_only_what_arrives_after_it_started(kafka_bootstrap, topic):
    _run(kafka_bootstrap, "produce", topic, stdin=b"old-1\nold-2\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
    }
    tail = subprocess.Popen(
        [sys.executable, "-m", "driftloop.cli", "tail", topic, "-n", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert b"from its end" in tail.stderr.readline()  # positioned: what comes next is new
        _run(kafka_bootstrap, "produce", topic, stdin=b"new-1\nnew-2\nnew-3\n")
        out, _ = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert tail.returncode == 0
    assert out.decode().splitlines() == ["new-1", "new-2"]  # -n 2: the third is not waited for


def test_missing_topic_or_broker_is_one_line(kafka_bootstrap, unique):
    for command in (("produce", f"missing-{unique}"), ("tail", f"missing-{unique}")):
        done = _run(kafka_bootstrap, *command)
        assert done.returncode == 2
        assert done.stderr.decode().strip() == (
            f"driftloop: error: no topic 'missing-{unique}' on the broker at {kafka_bootstrap}"
        )
    done = _run("127.0.0.1:1", "tail", "events")
    assert done.returncode == 2 and b"no Kafka broker answered a metadata request at 127.0.0.1:1" in done.stderr


@pytest.mark.parametrize(
    ("command", "started"),
    [(("tail", "{topic}"), b"from its end"), (("status", "--watch", "--interval", "1"), b"pulse: ")],
)
def test_a_tail_or_watch_started_in_the_background_still_ends_on_ctrl_c(kafka_bootstrap, topic, command, started):
    # A shell without job control starts background commands with SIGINT ignored; `kill -INT` must still end them.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:1",  # the watch shows the registry as unreachable and goes on
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "driftloop.cli", *(part.format(topic=topic) for part in command)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 60
        seen = b""
        while started not in seen and time.monotonic() < deadline:
            seen += process.stdout.readline()
        assert started in seen, seen
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
