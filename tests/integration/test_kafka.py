"""The project's Kafka helpers against a real broker (see the kafka_bootstrap fixture)."""

import time

import pytest

from driftloop import kafka


def test_create_topics_then_produce_and_consume_with_a_group(kafka_bootstrap, unique):
    topic = f"roundtrip-{unique}"
    assert kafka.ensure_topics(kafka_bootstrap, [topic], partitions=3) == [topic]
    assert kafka.ensure_topics(kafka_bootstrap, [topic], partitions=3) == []  # idempotent
    metadata = kafka.admin(kafka_bootstrap).list_topics(topic, timeout=10)
    assert len(metadata.topics[topic].partitions) == 3

    sent = {f"user-{i % 7}:{i}".encode() for i in range(300)}
    producer = kafka.producer(kafka_bootstrap)
    for value in sent:
        producer.produce(topic, key=value.split(b":")[0], value=value)
    assert producer.flush(15) == 0

    group = f"group-{unique}"
    consumer = kafka.consumer(kafka_bootstrap, group, **{"enable.auto.commit": False})
    consumer.subscribe([topic])
    received, partitions_by_key = set(), {}
    deadline = time.monotonic() + 45
    while len(received) < len(sent) and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.5):
            assert message.error() is None
            received.add(message.value())
            # Same key, same partition: per-entity ordering depends on it.
            assert partitions_by_key.setdefault(message.key(), message.partition()) == message.partition()
    consumer.commit(asynchronous=False)
    consumer.close()
    assert received == sent

    # The group's committed offsets hold: a new member of the same group sees nothing old, only what comes
    # after (read until that arrives; from the start, as auto.offset.reset=earliest would, it would come last).
    producer.produce(topic, key=b"user-0", value=b"after-the-commit")
    assert producer.flush(15) == 0
    again = kafka.consumer(kafka_bootstrap, group)
    again.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + 45
    while b"after-the-commit" not in seen and time.monotonic() < deadline:
        seen += [m.value() for m in again.consume(100, timeout=0.5) if m.error() is None]
    again.close()
    assert seen == [b"after-the-commit"]


def test_unreachable_broker_fails_fast_with_one_line():
    started = time.monotonic()
    with pytest.raises(Exception) as error:
        kafka.wait_for_broker("127.0.0.1:1", timeout=2)
    assert time.monotonic() - started < 10
    assert "no Kafka broker answered a metadata request at 127.0.0.1:1" in str(error.value)
