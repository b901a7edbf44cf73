"""ChangelogTable against a real broker: what a restarted or newly assigned worker finds in its state.

Each table is made on a data directory of its own (a worker on another host, which restores from the
changelog alone) unless a test names the directory (a worker restarted where it ran before).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import msgspec
import psutil
import pytest
import rocksdict
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import ConfigResource

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.streams.state.changelog import STORE_WRITE_CHUNK, ChangelogDeliveryError, ChangelogTable
from driftloop.streams.state.store import PartitionStore, StateMemory

PARTITIONS = 4
MEMORY = StateMemory(32)


@pytest.fixture
def topic(unique: str) -> str:
    return f"test-state-{unique}-changelog"


@pytest.fixture
def producer(kafka_bootstrap: str):
    return kafka.producer(kafka_bootstrap)


@pytest.fixture
def tables(tmp_path):
    """table(topic, directory=None, **options): a ChangelogTable, on a directory of its own unless given."""
    made: list[ChangelogTable] = []

    def table(topic: str, directory=None, name: str = "test-state", memory=MEMORY, **options) -> ChangelogTable:
        made.append(
            ChangelogTable(
                name, topic, PARTITIONS, directory=directory or tmp_path / f"host-{len(made)}", memory=memory, **options
            )
        )
        return made[-1]

    yield table
    for each in made:
        each.close()


@pytest.fixture
def new_worker_table(kafka_bootstrap, tables):
    """What a (re)started worker does: ensure the changelog, then restore its assigned partitions."""

    def start(topic: str, partitions=range(PARTITIONS), directory=None, **options) -> ChangelogTable:
        table = tables(topic, directory, **options)
        table.ensure_changelog(kafka_bootstrap)
        table.restore(kafka_bootstrap, partitions)
        return table

    return start


def _flush(table: ChangelogTable, producer) -> int:
    produced = table.flush_to(producer)
    assert producer.flush(15) == 0
    table.check_delivered()
    table.wait_written()  # the acknowledged records are in the store, out of memory
    return produced


def _raw_records(bootstrap: str, topic: str, partition: int) -> list[tuple[bytes, bytes | None]]:
    """The changelog partition's records as any Kafka client sees them."""
    consumer = kafka.consumer(
        bootstrap,
        "test-raw-reader",
        **{"enable.partition.eof": True, "fetch.wait.max.ms": 10, "enable.auto.commit": False},
    )
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


def test_a_restarted_worker_gets_back_every_flushed_write_and_loses_unflushed_ones(
    kafka_bootstrap, topic, producer, new_worker_table, tables
):
    table = new_worker_table(topic)
    assert len(table) == 0
    state = {"latest": 1700000000.5, "sliding": [[1700000000.5, 1, 31.5]], "tag": "café", "seen": True, "n": 3}
    table.set(0, "u-1", state)
    table.set(3, "ü-2", {"n": 7})
    table.set(1, "e-9", [1, 2.25, "x"])
    assert _flush(table, producer) == 3
    table.set(0, "u-unflushed", {"n": 1})  # the worker dies before its next flush

    restarted = tables(topic)
    restored = restarted.restore(kafka_bootstrap, range(PARTITIONS))
    assert (restored.records, restored.keys) == (3, 3)
    assert restarted.get(0, "u-1") == state
    assert restarted.get(3, "ü-2") == {"n": 7}
    assert restarted.get(1, "e-9") == [1, 2.25, "x"]
    assert restarted.get(0, "u-unflushed") is None
    assert len(restarted) == 3 and restarted.assigned == frozenset(range(PARTITIONS))


def test_changelog_records_are_utf8_keys_and_msgpack_values_in_the_state_partition(
    kafka_bootstrap, topic, producer, new_worker_table
):
    table = new_worker_table(topic)
    table.set(2, "ü-1", {"amount": 31.5, "ids": ["e-1"], "raw": b"{}"})
    table.set(2, "u-2", {"n": 1})
    table.delete(2, "u-2")  # set then deleted before the flush: only the tombstone goes out
    _flush(table, producer)
    records = sorted(_raw_records(kafka_bootstrap, topic, 2))
    assert records[0] == (b"u-2", None)
    assert records[1][0] == "ü-1".encode()
    assert msgspec.msgpack.decode(records[1][1]) == {"amount": 31.5, "ids": ["e-1"], "raw": b"{}"}
    assert [_raw_records(kafka_bootstrap, topic, p) for p in (0, 1, 3)] == [[], [], []]


def test_a_changelog_written_as_json_is_still_restored(kafka_bootstrap, topic, producer, new_worker_table, tables):
    new_worker_table(topic)  # creates the topic
    producer.produce(topic, value=b'{"w":{"latest":1.5},"o":7}', key=b"u-old", partition=1)
    producer.produce(topic, value=None, key=b"u-gone", partition=1)
    assert producer.flush(10) == 0
    restarted = tables(topic, name="entity-state")
    restarted.restore(kafka_bootstrap, [1])
    assert restarted.get(1, "u-old") == {"w": {"latest": 1.5}, "o": 7}
    assert restarted.get(1, "u-gone") is None


def test_ten_writes_to_a_key_between_flushes_are_one_record_with_the_last_value(
    kafka_bootstrap, topic, producer, new_worker_table
):
    table = new_worker_table(topic)
    for count in range(1, 11):
        table.set(1, "u-1", {"count": count})
    assert _flush(table, producer) == 1
    assert _flush(table, producer) == 0  # nothing written since
    assert _raw_records(kafka_bootstrap, topic, 1) == [(b"u-1", msgspec.msgpack.encode({"count": 10}))]


def test_a_deleted_key_stays_deleted_after_a_restart(kafka_bootstrap, topic, producer, new_worker_table):
    table = new_worker_table(topic)
    table.set(0, "gone", {"n": 1})
    table.set(0, "kept", {"n": 2})
    _flush(table, producer)
    table.delete(0, "gone")
    assert table.get(0, "gone") is None
    _flush(table, producer)

    restarted = new_worker_table(topic)
    assert restarted.items(0) == [("kept", {"n": 2})]
    assert len(restarted) == 1


def test_partitions_are_isolated_and_drop_forgets_state_and_unflushed_writes(
    kafka_bootstrap, topic, producer, new_worker_table
):
    table = new_worker_table(topic)
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


def test_restore_loads_only_the_assigned_partitions(kafka_bootstrap, topic, producer, new_worker_table, tables):
    writer = new_worker_table(topic)
    for p in range(PARTITIONS):
        for i in range(5):
            writer.set(p, f"u-{p}-{i}", {"p": p, "i": i})
    _flush(writer, producer)

    other_worker = tables(topic)
    restored = other_worker.restore(kafka_bootstrap, [1, 3])
    assert (restored.records, restored.keys) == (10, 10)
    assert other_worker.assigned == frozenset({1, 3})
    assert sorted(key for p in (1, 3) for key, _ in other_worker.items(p)) == sorted(
        f"u-{p}-{i}" for p in (1, 3) for i in range(5)
    )
    with pytest.raises(ValueError, match="not assigned"):
        other_worker.items(0)


def test_restore_of_a_partition_replaces_what_the_store_held_for_it(kafka_bootstrap, topic, producer, new_worker_table):
    table = new_worker_table(topic)
    table.set(2, "flushed", {"n": 1})
    _flush(table, producer)
    table.set(2, "unflushed", {"n": 2})
    table.restore(kafka_bootstrap, [2])
    assert table.items(2) == [("flushed", {"n": 1})]
    assert _flush(table, producer) == 0


def test_restore_of_an_empty_changelog_is_quick_and_empty(kafka_bootstrap, topic, tables):
    table = tables(topic)
    assert table.ensure_changelog(kafka_bootstrap) is True
    restored = table.restore(kafka_bootstrap, range(PARTITIONS))
    assert (restored.records, restored.keys, len(table)) == (0, 0, 0)
    assert restored.seconds < 2


def test_restore_of_50k_keys_is_complete_and_fast(kafka_bootstrap, topic, producer, new_worker_table, tables):
    writer = new_worker_table(topic)
    state = {"v": 1, "latest": 1700000000.0, "sliding": [[1700000000.0, 1, 31.5, 1, 31.5, 31.5]] * 3}
    for i in range(50_000):
        writer.set(i % PARTITIONS, f"user-{i}", state)
    assert _flush(writer, producer) == 50_000

    restarted = tables(topic)
    restored = restarted.restore(kafka_bootstrap, range(PARTITIONS))
    assert (restored.records, restored.keys, len(restarted)) == (50_000, 50_000, 50_000)
    assert restarted.get(49_999 % PARTITIONS, "user-49999") == state
    # 50k records/s would be 1 s; the bound leaves room for a loaded 2-core CI machine.
    assert restored.seconds < 5, f"restore took {restored.seconds:.2f}s"


def test_expire_removes_old_join_entries_with_tombstones_and_returns_them(
    kafka_bootstrap, topic, producer, new_worker_table
):
    pending = new_worker_table(topic, expiry_time=_predicted_at)
    for event_id, predicted_at in [("e-1", 100.0), ("e-2", 250.0), ("e-3", 400.0)]:
        pending.set(1, event_id, {"score": 0.9, "predicted_at": predicted_at})
    _flush(pending, producer)

    expired = pending.expire(1, older_than=300.0)
    assert sorted(expired) == [
        ("e-1", {"score": 0.9, "predicted_at": 100.0}),
        ("e-2", {"score": 0.9, "predicted_at": 250.0}),
    ]
    assert [key for key, _ in pending.items(1)] == ["e-3"]
    assert _flush(pending, producer) == 2

    restarted = new_worker_table(topic)
    assert [key for key, _ in restarted.items(1)] == ["e-3"]


def _predicted_at(value: dict) -> float:
    return value["predicted_at"]


def test_ensure_changelog_creates_a_compacted_topic_once(kafka_bootstrap, topic, tables):
    table = tables(topic)
    assert table.ensure_changelog(kafka_bootstrap) is True
    assert table.ensure_changelog(kafka_bootstrap) is False
    client = kafka.admin(kafka_bootstrap)
    assert len(client.list_topics(topic, timeout=10).topics[topic].partitions) == PARTITIONS
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    assert client.describe_configs([resource])[resource].result(10)["cleanup.policy"].value == "compact"


def test_a_changelog_with_another_partition_count_is_refused(kafka_bootstrap, topic, tables):
    kafka.ensure_topics(kafka_bootstrap, [topic], partitions=2)
    with pytest.raises(
        DriftloopError,
        match=f"changelog topic '{topic}' of table 'test-state' has 2 partitions but the source has {PARTITIONS}",
    ):
        tables(topic).ensure_changelog(kafka_bootstrap)


def test_a_changelog_that_deletes_old_records_is_refused(kafka_bootstrap, topic, tables):
    kafka.ensure_topics(kafka_bootstrap, [topic], partitions=PARTITIONS)  # default policy: delete
    with pytest.raises(DriftloopError, match="cleanup.policy=delete: deletion by age or size would lose"):
        tables(topic).ensure_changelog(kafka_bootstrap)


def test_restore_from_a_missing_changelog_fails_at_once(kafka_bootstrap, topic, tables):
    started = time.monotonic()
    with pytest.raises(DriftloopError, match=f"changelog topic '{topic}' does not exist"):
        tables(topic).restore(kafka_bootstrap, [0])
    assert time.monotonic() - started < 5


def test_undelivered_changelog_records_are_reported_before_a_commit(kafka_bootstrap, topic, new_worker_table):
    table = new_worker_table(topic, [0])
    table.set(0, "u-1", {"n": 1})
    unreachable = kafka.producer("127.0.0.1:1", **{"message.timeout.ms": 300, "log_level": 0})
    assert table.flush_to(unreachable) == 1
    unreachable.flush(10)
    with pytest.raises(ChangelogDeliveryError, match="1 changelog records to .* were not delivered"):
        table.check_delivered()
    table.check_delivered()  # reported once


def test_values_and_partitions_are_checked(kafka_bootstrap, topic, new_worker_table):
    table = new_worker_table(topic, [0])
    with pytest.raises(ValueError, match="None is not a storable value"):
        table.set(0, "u-1", None)
    with pytest.raises(ValueError, match="has partitions 0..3, not 4"):
        table.restore(kafka_bootstrap, [4])


def test_a_worker_restarted_on_its_data_dir_reads_only_what_changed_since(
    kafka_bootstrap, topic, producer, new_worker_table, tables, tmp_path
):
    here = tmp_path / "this-host"
    first = new_worker_table(topic, directory=here)
    for i in range(1000):
        first.set(i % PARTITIONS, f"u-{i}", {"n": i})
    _flush(first, producer)
    first.close()  # the worker stops; another one takes its partitions and writes on
    elsewhere = new_worker_table(topic)
    elsewhere.set(1, "u-1", {"n": -1})
    elsewhere.set(2, "u-new", {"n": 5})
    elsewhere.delete(3, "u-3")
    _flush(elsewhere, producer)
    elsewhere.close()

    back = tables(topic, here)
    assert back.restore(kafka_bootstrap, range(PARTITIONS)).records == 3  # not 1,003
    assert (back.get(1, "u-1"), back.get(2, "u-new"), back.get(3, "u-3"), back.get(0, "u-996")) == (
        {"n": -1},
        {"n": 5},
        None,
        {"n": 996},
    )
    assert len(back) == 1000
    restored = back.restore(kafka_bootstrap, range(PARTITIONS))  # again: its store has it all now
    assert restored.records == 0 and restored.keys == 1000


def test_a_killed_worker_reopens_its_store_and_the_changelog_fills_in_the_rest(
    kafka_bootstrap, topic, new_worker_table, tables, tmp_path
):
    here = tmp_path / "this-host"
    new_worker_table(topic, directory=here).close()  # the topic exists before the child writes
    child = _killed_writer(kafka_bootstrap, topic, here, "flushed")
    # records the store never applied: acknowledged by the broker after the store's last flush
    back = tables(topic, here)
    assert back.restore(kafka_bootstrap, range(PARTITIONS)).records == 500  # not 2,500
    assert len(back) == 2500
    assert back.get(0, "after-0") == {"late": 0} and back.get(1, "u-1") == {"n": 1}
    assert child.stdout.split() == ["stored", "2000"]


def test_a_worker_killed_before_its_store_flushed_gets_everything_back_from_the_changelog(
    kafka_bootstrap, topic, new_worker_table, tables, tmp_path
):
    here = tmp_path / "this-host"
    new_worker_table(topic, directory=here).close()
    _killed_writer(kafka_bootstrap, topic, here, "unflushed")
    # the store has no write-ahead log: what was only in its memtables died with the process
    back = tables(topic, here)
    assert back.restore(kafka_bootstrap, range(PARTITIONS)).records == 2500
    assert len(back) == 2500 and back.counts(0) == {"": 625}
    assert back.get(0, "after-0") == {"late": 0} and back.get(1, "u-1") == {"n": 1}


def test_a_worker_killed_between_the_batches_of_a_store_write_gets_the_rest_from_the_changelog(
    kafka_bootstrap, topic, new_worker_table, tables, tmp_path
):
    here = tmp_path / "this-host"
    new_worker_table(topic, directory=here).close()
    child = _killed_writer(kafka_bootstrap, topic, here, "cut")
    assert child.stdout.split() == ["acknowledged", "2600"]
    back = tables(topic, here, kind_of=_kind)
    # On disk: the first batch of the write's 1,600 last records (k-1000..1599's at offsets 1000..1599,
    # then k-0..399's at 1600..1999), with offset 2000; the restore reads on from there.
    assert back.restore(kafka_bootstrap, [0]).records == 600
    assert len(back) == 1400 and back.counts(0) == {"a": 600, "b": 800}
    assert back.get(0, "k-4") == {"n": 2, "k": "b"} and back.get(0, "k-1500") == {"n": 1, "k": "a"}
    assert back.get(0, "k-1") is None and back.get(0, "k-399") is None  # deleted by the second flush
    assert back.get(0, "k-400") == {"n": 2, "k": "b"}


def _killed_writer(bootstrap: str, topic: str, directory, store: str) -> subprocess.CompletedProcess:
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, bootstrap, topic, str(directory), store],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    return child


# Writes 2,000 keys that reach its store ("flushed": and the store's files, by closing it), then 500 that
# reach only the changelog, then dies by SIGKILL (its RocksDB lock and memtables go with it, as with
# `kill -9`). "cut": 1,600 keys, then 1,000 of them again (the odd ones of the first 400 deleted), on
# partition 0 of a table that defers its writes; it is killed in the write of all 2,600 records, after its
# first batch reached disk.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from driftloop import kafka
from driftloop.streams.state.changelog import ChangelogTable
from driftloop.streams.state.store import StateMemory
bootstrap, topic, directory, store = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
producer = kafka.producer(bootstrap)
if store == "cut":
    from driftloop.streams.state.store import PartitionStore
    write, batches = PartitionStore.write, []
    def cut(self, *args):
        if batches:  # the second batch never lands; the first is on disk (closing a store flushes it)
            self.close()
            os.kill(os.getpid(), signal.SIGKILL)
        batches.append(write(self, *args))
    PartitionStore.write = cut
    table = ChangelogTable("test-state", topic, 4, directory=directory, memory=StateMemory(16),
                           kind_of=lambda value: value["k"], write_every=3600)
    table.restore(bootstrap, [0])
    for i in range(1600):
        table.set(0, f"k-{i}", {"n": 1, "k": "a"})
    table.flush_to(producer); producer.flush(30); table.check_delivered()
    for i in range(1000):
        if i < 400 and i % 2:
            table.delete(0, f"k-{i}")
        else:
            table.set(0, f"k-{i}", {"n": 2, "k": "b"})
    table.flush_to(producer); producer.flush(30); table.check_delivered()
    print("acknowledged", 2600, flush=True)
    table.close()  # writes what waited: the 2,600 records' 1,600 last ones, in two batches
    sys.exit("the write was not cut")
table = ChangelogTable("test-state", topic, 4, directory=directory, memory=StateMemory(16))
table.restore(bootstrap, range(4))
for i in range(2000):
    table.set(i % 4, f"u-{i}", {"n": i})
table.flush_to(producer); producer.flush(30); table.check_delivered(); table.wait_written()
print("stored", len(table), flush=True)
if store == "flushed":
    table.close()
raw = kafka.producer(bootstrap)  # the same records the table would write, acknowledged without it
import msgspec
for i in range(500):
    raw.produce(topic, msgspec.msgpack.encode({"late": i}), f"after-{i}".encode(), i % 4)
raw.flush(30)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_that_followed_a_deleted_changelog_is_wiped_and_restored_from_the_new_one(
    kafka_bootstrap, topic, producer, new_worker_table, tmp_path
):
    here = tmp_path / "this-host"
    old = new_worker_table(topic, directory=here)
    for i in range(50):
        old.set(0, f"old-{i}", {"n": i})
    _flush(old, producer)
    old.close()
    client = kafka.admin(kafka_bootstrap)
    client.delete_topics([topic], operation_timeout=15)[topic].result(15)
    deadline = time.monotonic() + 15
    while topic in client.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    fresh = new_worker_table(topic)
    fresh.set(0, "new-1", {"n": 1})
    _flush(fresh, producer)
    fresh.close()

    back = new_worker_table(topic, directory=here)
    assert back.items(0) == [("new-1", {"n": 1})]


def test_memory_holds_only_what_changed_since_the_last_checkpoint(kafka_bootstrap, topic, producer, new_worker_table):
    table = new_worker_table(topic)
    value = {"p": "x" * 600, "at": 1700000000.0}  # the size of a waiting prediction
    rss_before = _rss_mb()
    for batch in range(20):
        for i in range(10_000):
            table.set(i % PARTITIONS, f"e-{batch}-{i}", value)
        assert table.overlay_estimate() > 0
        _flush(table, producer)
        assert table.overlay_estimate() == 0  # on disk now, not in memory
    grown = _rss_mb() - rss_before
    assert len(table) == 200_000 and table.get(3, "e-7-9999") == value
    # 200,000 values of ~650 bytes are 130 MB; RocksDB's caches are capped at 3/4 of 32 MB
    assert grown < 80, f"RSS grew {grown:.0f} MB"


def test_each_store_write_reports_how_long_it_took(topic, producer, new_worker_table):
    memory = StateMemory(16)
    seconds: list[float] = []
    memory.on_write = seconds.append  # the worker's store_write stage
    table = new_worker_table(topic, memory=memory)
    for checkpoint in range(2):
        for i in range(1000):
            table.set(i % PARTITIONS, f"e-{i}", {"checkpoint": checkpoint})
        _flush(table, producer)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


def test_a_value_changed_while_its_old_value_is_written_stays_readable(
    kafka_bootstrap, topic, producer, new_worker_table
):
    table = new_worker_table(topic)
    table.set(0, "k", {"v": 1})
    table.flush_to(producer)
    assert producer.flush(15) == 0  # acknowledged: {"v": 1} is queued for the store
    table.set(0, "k", {"v": 2})
    table.wait_written()
    assert table.get(0, "k") == {"v": 2}
    _flush(table, producer)
    assert table.overlay_estimate() == 0 and table.get(0, "k") == {"v": 2}


def test_a_value_changed_before_its_old_value_was_acknowledged_stays_readable(
    kafka_bootstrap, topic, producer, new_worker_table
):
    table = new_worker_table(topic)
    table.set(0, "k", {"v": 1})
    table.flush_to(producer)  # produced, not yet acknowledged
    table.set(0, "k", {"v": 2})  # dirty when {"v": 1} is handed to the writer
    assert producer.flush(15) == 0
    table.seal()
    assert table.drain(producer, None)  # {"v": 2} on its way: neither dirty nor sealed now
    table.wait_written()
    assert table.get(0, "k") == {"v": 2}  # not the stored {"v": 1}
    _flush(table, producer)
    assert table.get(0, "k") == {"v": 2}


def test_expiry_reads_what_is_due_whether_stored_changed_or_rewritten(
    kafka_bootstrap, topic, producer, new_worker_table, tmp_path
):
    table = new_worker_table(topic, directory=tmp_path / "here", expiry_time=_predicted_at, kind_of=_kind)
    table.set(0, "stored-old", {"predicted_at": 100.0, "k": "a"})
    table.set(0, "rewritten", {"predicted_at": 100.0, "k": "a"})
    table.set(0, "stored-new", {"predicted_at": 900.0, "k": "b"})
    _flush(table, producer)
    table.set(0, "rewritten", {"predicted_at": 800.0, "k": "a"})  # indexed at 100, now at 800
    table.set(0, "in-memory-old", {"predicted_at": 50.0, "k": "b"})
    assert table.counts(0) == {"a": 2, "b": 2}
    assert sorted(key for key, _ in table.expire(0, older_than=500.0)) == ["in-memory-old", "stored-old"]
    _flush(table, producer)
    assert sorted(key for key, _ in table.expire(0, older_than=500.0)) == []
    assert sorted(key for key, _ in table.expire(0, older_than=850.0)) == ["rewritten"]
    _flush(table, producer)
    table.close()

    back = new_worker_table(topic, directory=tmp_path / "here", expiry_time=_predicted_at, kind_of=_kind)
    assert back.counts(0) == {"b": 1}  # kept in the store: not counted by reading every key
    assert [key for key, _ in back.expire(0, older_than=1000.0)] == ["stored-new"]


def test_a_table_that_defers_its_writes_keeps_a_prefix_of_its_changelog_and_loses_nothing(
    kafka_bootstrap, topic, producer, new_worker_table, tables, tmp_path
):
    writes: list[float] = []
    memory = StateMemory(8)  # writes come when 1 MB waits (a quarter of the 4 MB overlay budget), or at close
    memory.on_write = writes.append
    here = tmp_path / "here"
    table = new_worker_table(topic, partitions=[0], directory=here, memory=memory, write_every=3600)
    table.set(0, "written-then-deleted", {"n": 1})
    table.set(0, "kept", {"n": 1})
    _flush(table, producer)
    table.delete(0, "written-then-deleted")
    table.set(0, "kept", {"n": 2})
    _flush(table, producer)
    assert writes == [] and table._stores[0].offset == 0  # acknowledged, read from memory
    assert (table.get(0, "kept"), table.get(0, "written-then-deleted")) == ({"n": 2}, None)

    killed = tables(topic, directory=tmp_path / "elsewhere")  # a successor without this store: the changelog
    assert killed.restore(kafka_bootstrap, [0]).records == 4
    assert killed.items(0) == [("kept", {"n": 2})]

    table.close()  # what waited is written: one write, its last record per key
    assert len(writes) == 1
    reopened = tables(topic, directory=here, memory=memory, write_every=3600)
    assert reopened.restore(kafka_bootstrap, [0]).records == 0  # the store holds the whole changelog
    assert reopened.items(0) == [("kept", {"n": 2})]

    for i in range(300):  # 1.2 MB of values waiting: written without waiting for the hour
        reopened.set(0, f"big-{i}", {"blob": b"x" * 4000})
        if i % 50 == 49:
            _flush(reopened, producer)
    assert len(writes) >= 2


def test_a_table_keeping_written_values_serves_them_from_memory_until_its_budget_needs_the_room(
    kafka_bootstrap, topic, producer, new_worker_table
):
    memory = StateMemory(8)  # 4 MB for the values in memory: kept ones go past 3 MB
    table = new_worker_table(topic, partitions=[0], memory=memory, keep_written=True)
    state = {"n": 1}
    table.set(0, "hot", state)
    _flush(table, producer)
    assert table._stores[0].get(b"hot") is not None  # written to RocksDB ...
    assert table.get(0, "hot") is state  # ... and not read back from it
    for i in range(400):  # ~8 MB of Python values by the table's estimate
        table.set(0, f"cold-{i}", {"blob": b"x" * 4000})
        if i % 50 == 49:
            _flush(table, producer)
    assert table.get(0, "hot") == state and table.get(0, "hot") is not state  # read back from RocksDB


def test_the_expiry_index_holds_a_write_per_second_not_a_key_and_forgets_what_is_gone(
    kafka_bootstrap, topic, producer, new_worker_table, tmp_path
):
    table = new_worker_table(topic, partitions=[0], expiry_time=_predicted_at)
    for i in range(STORE_WRITE_CHUNK):  # 600 entries due within second 100, 400 within second 101
        table.set(0, f"k{i:04d}", {"predicted_at": 100.0 + i / 600})
    _flush(table, producer)
    store = table._stores[0]
    assert len(list(store.due(1e9))) == 2  # one index entry per second of one write batch

    assert len(table.expire(0, older_than=100.5)) == 300  # part of second 100 only
    _flush(table, producer)
    assert table.expire(0, older_than=100.5) == []
    assert len(list(store.due(1e9))) == 2  # second 100 still indexes 300 entries
    assert sorted(key for key, _ in table.expire(0, older_than=102.0)) == [
        f"k{i:04d}" for i in range(300, STORE_WRITE_CHUNK)
    ]
    _flush(table, producer)
    assert table.expire(0, older_than=102.0) == []  # the tombstones are stored: their entries go
    assert list(store.due(1e9)) == []


def test_an_expiry_index_entry_of_a_store_from_before_buckets_is_still_read(tmp_path):
    store = PartitionStore(tmp_path / "0", StateMemory(8))
    value = msgspec.msgpack.encode({"predicted_at": 100.25})
    store.write([(b"old", value, None)], 1, {"": 1})  # stored without an index entry: add one the old way
    batch = rocksdict.WriteBatch(raw_mode=True)
    batch.put((100_250).to_bytes(8, "big") + b"old", b"", store._expiry)
    store._db.write(batch)
    [(_index_key, covers, keys)] = store.due(100.3)
    assert keys == [b"old"] and covers(100.25) and not covers(100.5)
    assert list(store.due(100.25)) == []
    store.close()


def _kind(value: dict) -> str:
    return value["k"]


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1024 / 1024
