"""The raw consume -> produce baseline against a real broker (see the kafka_bootstrap fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.load.benchmarks.passthrough import measure_raw_passthrough, passthrough, read_topic

COUNT = 20_000


def test_every_message_arrives_exactly_once(kafka_bootstrap, unique):
    source, sink = f"pt-source-{unique}", f"pt-sink-{unique}"
    kafka.ensure_topics(kafka_bootstrap, [source, sink], partitions=4)
    producer = kafka.producer(kafka_bootstrap)
    sent = {}
    for i in range(COUNT):
        key, value = f"u-{i % 97}".encode(), json.dumps({"seq": i, "pad": "x" * 150}).encode()
        sent[value] = key
        producer.produce(source, value=value, key=key)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    stats = passthrough(kafka_bootstrap, source, sink, COUNT, group_id=f"pt-{unique}", batch_size=500, timeout=60)

    assert json.loads(json.dumps(stats)) == stats  # JSON-able
    assert stats["events"] == COUNT
    assert stats["seconds"] > 0 and stats["events_per_s"] > 0
    assert stats["events_per_s"] == pytest.approx(COUNT / stats["seconds"], rel=0.01)
    assert stats["wait_for_first_s"] >= 0  # the group join, reported apart from the measured time

    consumer = kafka.consumer(kafka_bootstrap, f"check-{unique}", **{"enable.auto.commit": False})
    partitions = consumer.list_topics(sink, timeout=10).topics[sink].partitions
    consumer.assign([TopicPartition(sink, p, OFFSET_BEGINNING) for p in partitions])  # no group join
    received: Counter = Counter()
    keys = {}
    deadline = time.monotonic() + 30
    quiet = 0
    while time.monotonic() < deadline and quiet < 4:  # everything, then ~2 s more so duplicates would show
        batch = [m for m in consumer.consume(5000, timeout=0.5) if m.error() is None]
        for message in batch:
            received[message.value()] += 1
            keys[message.value()] = message.key()
        quiet = quiet + 1 if not batch and sum(received.values()) >= COUNT else 0
    consumer.close()
    assert sum(received.values()) == COUNT
    assert set(received) == set(sent) and set(received.values()) == {1}
    assert keys == sent  # keys travel with their values


def test_measure_raw_passthrough_creates_verifies_and_cleans_up(kafka_bootstrap):
    stats = measure_raw_passthrough(kafka_bootstrap, count=3000, partitions=2)
    assert stats["events"] == 3000 and stats["verified"] is True and stats["partitions"] == 2
    assert stats["events_per_s"] > 0
    assert 150 <= stats["message_bytes"] <= 260  # demo-event-shaped JSON
    topics = kafka.admin(kafka_bootstrap).list_topics(timeout=10).topics
    assert stats["source_topic"] not in topics and stats["sink_topic"] not in topics  # cleaned up


def test_too_few_messages_fail_with_a_clear_error(kafka_bootstrap, unique):
    source, sink = f"pt-short-{unique}", f"pt-short-sink-{unique}"
    kafka.ensure_topics(kafka_bootstrap, [source, sink], partitions=1)
    producer = kafka.producer(kafka_bootstrap)
    for i in range(5):
        producer.produce(source, value=b"%d" % i)
    assert producer.flush(10) == 0
    with pytest.raises(DriftloopError, match="forwarded 5 of 10 messages"):
        passthrough(kafka_bootstrap, source, sink, 10, group_id=f"pt-{unique}", timeout=4.5)
    assert len(read_topic(kafka_bootstrap, sink, 5, idle=0.5, timeout=10)) == 5


def test_module_prints_json(kafka_bootstrap):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftloop.load.benchmarks.passthrough",
            "--bootstrap",
            kafka_bootstrap,
            "--events",
            "2000",
            "--partitions",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)
    assert stats["events"] == 2000 and stats["events_per_s"] > 0 and stats["verified"] is True
