"""ChangelogTable against a real broker: what a restarted or newly assigned worker finds in its state."""

from __future__ import annotations

import time

import msgspec
import pytest
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import ConfigResource

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.streams.state.changelog import ChangelogDeliveryError, ChangelogTable

PARTITIONS = 4


@pytest.fixture
def topic(unique: str) -> str:
    return f"test-state-{unique}-changelog"


@pytest.fixture
def producer(kafka_bootstrap: str):
    return kafka.producer(kafka_bootstrap)


def _new_worker_table(bootstrap: str, topic: str, partitions=range(PARTITIONS)) -> ChangelogTable:
    """What a (re)started worker does: ensure the changelog, then restore its assigned partitions."""
    table = ChangelogTable("test-state", topic, PARTITIONS)
    table.ensure_changelog(bootstrap)
    table.restore(bootstrap, partitions)
    return table


def _flush(table: ChangelogTable, producer) -> int:
    produced = table.flush_to(producer)
    assert producer.flush(15) == 0
    table.check_delivered()
    return produced


def _raw_records(bootstrap: str, topic: str, partition: int) -> list[tuple[bytes, bytes | None]]:
    """The changelog partition's records as any Kafka client sees them."""
    consumer = kafka.consumer(bootstrap, "test-raw-reader", **{"enable.partition.eof": True, "fetch.wait.max.ms": 10,
                                                               "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0)])
    records, deadline = [], time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.1):
                if message.error() is not None:
                    assert message.error().code() == KafkaError._PARTITION_EOF, message.error().str()
                    return records
                records.append((message.key(), message.value()))
    finally:
        consumer.close()
    raise AssertionError(f"{topic}[{partition}] not read to its end")


def test_a_restarted_worker_gets_back_every_flushed_write_and_loses_unflushed_ones(kafka_bootstrap, topic, producer):
    table = _new_worker_table(kafka_bootstrap, topic)
    assert len(table) == 0
    state = {"latest": 1700000000.5, "sliding": [[1700000000.5, 1, 31.5]], "tag": "café", "seen": True, "n": 3}
    table.set(0, "u-1", state)
    table.set(3, "ü-2", {"n": 7})
    table.set(1, "e-9", [1, 2.25, "x"])
    assert _flush(table, producer) == 3
    table.set(0, "u-unflushed", {"n": 1})  # the worker dies before its next flush

    restarted = ChangelogTable("test-state", topic, PARTITIONS)
    restored = restarted.restore(kafka_bootstrap, range(PARTITIONS))
    assert (restored.records, restored.keys) == (3, 3)
    assert restarted.get(0, "u-1") == state
    assert restarted.get(3, "ü-2") == {"n": 7}
    assert restarted.get(1, "e-9") == [1, 2.25, "x"]
    assert restarted.get(0, "u-unflushed") is None
    assert len(restarted) == 3 and restarted.assigned == frozenset(range(PARTITIONS))


def test_changelog_records_are_utf8_keys_and_msgpack_values_in_the_state_partition(kafka_bootstrap, topic, producer):
    table = _new_worker_table(kafka_bootstrap, topic)
    table.set(2, "ü-1", {"amount": 31.5, "ids": ["e-1"], "raw": b"{}"})
    table.set(2, "u-2", {"n": 1})
    table.delete(2, "u-2")  # set then deleted before the flush: only the tombstone goes out
    _flush(table, producer)
    records = sorted(_raw_records(kafka_bootstrap, topic, 2))
    assert records[0] == ("u-2".encode(), None)
    assert records[1][0] == "ü-1".encode()
    assert msgspec.msgpack.decode(records[1][1]) == {"amount": 31.5, "ids": ["e-1"], "raw": b"{}"}
    assert [_raw_records(kafka_bootstrap, topic, p) for p in (0, 1, 3)] == [[], [], []]


def test_a_changelog_written_as_json_is_still_restored(kafka_bootstrap, topic, producer):
    _new_worker_table(kafka_bootstrap, topic)  # creates the topic
    producer.produce(topic, value=b'{"w":{"latest":1.5},"o":7}', key=b"u-old", partition=1)
    producer.produce(topic, value=None, key=b"u-gone", partition=1)
    assert producer.flush(10) == 0
    restarted = ChangelogTable("entity-state", topic, PARTITIONS)
    restarted.restore(kafka_bootstrap, [1])
    assert restarted.get(1, "u-old") == {"w": {"latest": 1.5}, "o": 7}
    assert restarted.get(1, "u-gone") is None


def test_ten_writes_to_a_key_between_flushes_are_one_record_with_the_last_value(kafka_bootstrap, topic, producer):
    table = _new_worker_table(kafka_bootstrap, topic)
    for count in range(1, 11):
        table.set(1, "u-1", {"count": count})
    assert _flush(table, producer) == 1
    assert _flush(table, producer) == 0  # nothing written since
    assert _raw_records(kafka_bootstrap, topic, 1) == [(b"u-1", msgspec.msgpack.encode({"count": 10}))]


def test_a_deleted_key_stays_deleted_after_a_restart(kafka_bootstrap, topic, producer):
    table = _new_worker_table(kafka_bootstrap, topic)
    table.set(0, "gone", {"n": 1})
    table.set(0, "kept", {"n": 2})
    _flush(table, producer)
    table.delete(0, "gone")
    assert table.get(0, "gone") is None
    _flush(table, producer)

    restarted = _new_worker_table(kafka_bootstrap, topic)
    assert restarted.items(0) == [("kept", {"n": 2})]
    assert len(restarted) == 1


def test_partitions_are_isolated_and_drop_forgets_state_and_unflushed_writes(kafka_bootstrap, topic, producer):
    table = _new_worker_table(kafka_bootstrap, topic)
    table.set(0, "same-key", {"p": 0})
    table.set(1, "same-key", {"p": 1})
    _flush(table, producer)
    assert (table.get(0, "same-key"), table.get(1, "same-key")) == ({"p": 0}, {"p": 1})

    table.set(0, "unflushed", {"p": 0})
    table.set(1, "unflushed", {"p": 1})
    table.drop([0])  # partition 0 was revoked
    assert table.assigned == frozenset({1, 2, 3})
    assert len(table) == 2
    assert _flush(table, producer) == 1  # only partition 1's write
    with pytest.raises(ValueError, match="partition 0 is not assigned"):
        table.get(0, "same-key")
    with pytest.raises(ValueError, match="partition 0 is not assigned"):
        table.set(0, "same-key", {"p": 0})  # a revoked partition's changelog belongs to its new owner
    assert [key for key, _ in _raw_records(kafka_bootstrap, topic, 0)] == [b"same-key"]


def test_restore_loads_only_the_assigned_partitions(kafka_bootstrap, topic, producer):
    writer = _new_worker_table(kafka_bootstrap, topic)
    for p in range(PARTITIONS):
        for i in range(5):
            writer.set(p, f"u-{p}-{i}", {"p": p, "i": i})
    _flush(writer, producer)

    other_worker = ChangelogTable("test-state", topic, PARTITIONS)
    restored = other_worker.restore(kafka_bootstrap, [1, 3])
    assert (restored.records, restored.keys) == (10, 10)
    assert other_worker.assigned == frozenset({1, 3})
    assert sorted(key for p in (1, 3) for key, _ in other_worker.items(p)) == sorted(
        f"u-{p}-{i}" for p in (1, 3) for i in range(5))
    with pytest.raises(ValueError, match="not assigned"):
        other_worker.items(0)


def test_restore_of_a_partition_replaces_what_the_store_held_for_it(kafka_bootstrap, topic, producer):
    table = _new_worker_table(kafka_bootstrap, topic)
    table.set(2, "flushed", {"n": 1})
    _flush(table, producer)
    table.set(2, "unflushed", {"n": 2})
    table.restore(kafka_bootstrap, [2])
    assert table.items(2) == [("flushed", {"n": 1})]
    assert _flush(table, producer) == 0


def test_restore_of_an_empty_changelog_is_quick_and_empty(kafka_bootstrap, topic):
    table = ChangelogTable("test-state", topic, PARTITIONS)
    assert table.ensure_changelog(kafka_bootstrap) is True
    restored = table.restore(kafka_bootstrap, range(PARTITIONS))
    assert (restored.records, restored.keys, len(table)) == (0, 0, 0)
    assert restored.seconds < 2


def test_restore_of_50k_keys_is_complete_and_fast(kafka_bootstrap, topic, producer):
    writer = _new_worker_table(kafka_bootstrap, topic)
    state = {"v": 1, "latest": 1700000000.0, "sliding": [[1700000000.0, 1, 31.5, 1, 31.5, 31.5]] * 3}
    for i in range(50_000):
        writer.set(i % PARTITIONS, f"user-{i}", state)
    assert _flush(writer, producer) == 50_000

    restarted = ChangelogTable("test-state", topic, PARTITIONS)
    restored = restarted.restore(kafka_bootstrap, range(PARTITIONS))
    assert (restored.records, restored.keys, len(restarted)) == (50_000, 50_000, 50_000)
    assert restarted.get(49_999 % PARTITIONS, "user-49999") == state
    # 50k records/s would be 1 s; the bound leaves room for a loaded 2-core CI machine.
    assert restored.seconds < 5, f"restore took {restored.seconds:.2f}s"


def test_expire_removes_old_join_entries_with_tombstones_and_returns_them(kafka_bootstrap, topic, producer):
    pending = _new_worker_table(kafka_bootstrap, topic)
    for event_id, predicted_at in [("e-1", 100.0), ("e-2", 250.0), ("e-3", 400.0)]:
        pending.set(1, event_id, {"score": 0.9, "predicted_at": predicted_at})
    _flush(pending, producer)

    expired = pending.expire(1, older_than=300.0, time_of=lambda value: value["predicted_at"])
    assert sorted(expired) == [("e-1", {"score": 0.9, "predicted_at": 100.0}),
                               ("e-2", {"score": 0.9, "predicted_at": 250.0})]
    assert [key for key, _ in pending.items(1)] == ["e-3"]
    assert _flush(pending, producer) == 2

    restarted = _new_worker_table(kafka_bootstrap, topic)
    assert [key for key, _ in restarted.items(1)] == ["e-3"]


def test_ensure_changelog_creates_a_compacted_topic_once(kafka_bootstrap, topic):
    table = ChangelogTable("test-state", topic, PARTITIONS)
    assert table.ensure_changelog(kafka_bootstrap) is True
    assert table.ensure_changelog(kafka_bootstrap) is False
    client = kafka.admin(kafka_bootstrap)
    assert len(client.list_topics(topic, timeout=10).topics[topic].partitions) == PARTITIONS
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    assert client.describe_configs([resource])[resource].result(10)["cleanup.policy"].value == "compact"


def test_a_changelog_with_another_partition_count_is_refused(kafka_bootstrap, topic):
    kafka.ensure_topics(kafka_bootstrap, [topic], partitions=2)
    with pytest.raises(DriftloopError, match=f"changelog topic '{topic}' of table 'test-state' has 2 partitions "
                                             f"but the source has {PARTITIONS}"):
        ChangelogTable("test-state", topic, PARTITIONS).ensure_changelog(kafka_bootstrap)


def test_a_changelog_that_deletes_old_records_is_refused(kafka_bootstrap, topic):
    kafka.ensure_topics(kafka_bootstrap, [topic], partitions=PARTITIONS)  # default policy: delete
    with pytest.raises(DriftloopError, match="cleanup.policy=delete: deletion by age or size would lose"):
        ChangelogTable("test-state", topic, PARTITIONS).ensure_changelog(kafka_bootstrap)


def test_restore_from_a_missing_changelog_fails_at_once(kafka_bootstrap, topic):
    started = time.monotonic()
    with pytest.raises(DriftloopError, match=f"changelog topic '{topic}' does not exist"):
        ChangelogTable("test-state", topic, PARTITIONS).restore(kafka_bootstrap, [0])
    assert time.monotonic() - started < 5


def test_undelivered_changelog_records_are_reported_before_a_commit(kafka_bootstrap, topic):
    table = _new_worker_table(kafka_bootstrap, topic, [0])
    table.set(0, "u-1", {"n": 1})
    unreachable = kafka.producer("127.0.0.1:1", **{"message.timeout.ms": 300, "log_level": 0})
    assert table.flush_to(unreachable) == 1
    unreachable.flush(10)
    with pytest.raises(ChangelogDeliveryError, match="1 changelog records to .* were not delivered"):
        table.check_delivered()
    table.check_delivered()  # reported once


def test_values_and_partitions_are_checked(kafka_bootstrap, topic):
    table = _new_worker_table(kafka_bootstrap, topic, [0])
    with pytest.raises(ValueError, match="None is not a storable value"):
        table.set(0, "u-1", None)
    with pytest.raises(ValueError, match="has partitions 0..3, not 4"):
        table.restore(kafka_bootstrap, [4])
