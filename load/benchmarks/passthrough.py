"""The baselines every benchmark compares to: consume -> produce loops with nothing, or little, in between.

`passthrough()` forwards messages from one topic to another with nothing in between (no
deserialisation, no Faust), so its throughput is the ceiling the pipeline can approach on the same
broker and machine. `measure_raw_passthrough()` sets up fresh topics, pre-loads them, runs the loop,
checks the sink and returns the numbers; `python -m driftloop.load.benchmarks.passthrough --bootstrap HOST:PORT
--events N` prints them as JSON.

The clock starts at the first message received, so the consumer group's join (about half the
session timeout on Tansu) is reported separately as `wait_for_first_s` and not counted.

`driftloop bench` (load/benchmarks/data_plane.py) runs four of them as systems beside the data plane,
each in one thread with the worker's own Kafka client settings:

- `BytesPassthrough`: the value untouched;
- `JsonPassthrough`: stdlib `json` decode, add a field, encode, produce: the least a stream processor
  that reads its events does;
- `JournaledJsonPassthrough`: the JSON passthrough with the data plane's exact-recovery protocol for
  outputs: each batch's outputs are written to an output journal first (streams/state/journal.py, its
  RocksDB store included) and produced only once the broker has acknowledged it, so beside the plain
  JSON passthrough it shows what that protocol costs;
- `TransactionalJsonPassthrough`: the JSON passthrough in one Kafka transaction per batch (outputs and
  consumed offsets committed together): what exactly-once by Kafka transactions would cost instead.

With `--quix-python`, `QuixStateful` runs Quix Streams' stateful job (load/benchmarks/quix_stateful.py)
beside them, in its own interpreter.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.load.generator import FraudStream, encode
from driftloop.streams.state.journal import PREDICTED, OutputJournal
from driftloop.streams.state.store import StateMemory
from driftloop.streams.worker.loop import (
    CONSUMER_CONFIG,
    JOURNAL_PRODUCER_CONFIG,
    PRODUCER_CONFIG,
    STORE_RECORDS_PER_RECORD,
)

# The worker's consume call (streams/worker/loop.py), mirrored by the passthroughs: consume() returns
# early only for a full batch, so the wait is part of every event's latency at low rates.
BATCH, WAIT_SECONDS = 2000, 0.005


def passthrough(
    bootstrap: str,
    source_topic: str,
    sink_topic: str,
    count: int,
    *,
    group_id: str,
    batch_size: int = 1000,
    timeout: float = 120,
) -> dict[str, Any]:
    """Forward exactly `count` messages (key and value as they are) from source_topic to sink_topic.

    Returns {"events", "seconds", "events_per_s", ...}; `seconds` runs from the first message
    received until the last one is produced and flushed. Raises DriftloopError if `count` messages
    are not forwarded and delivered within `timeout` seconds (join wait included).
    """
    if count < 1 or batch_size < 1:
        raise ValueError("count and batch_size must be >= 1")
    failures: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    consumer = kafka.consumer(bootstrap, group_id)
    producer = kafka.producer(bootstrap, on_delivery=delivered)
    subscribed = time.perf_counter()
    deadline = time.monotonic() + timeout
    first: float | None = None
    forwarded = 0
    try:
        consumer.subscribe([source_topic])
        while forwarded < count:
            if time.monotonic() > deadline:
                raise DriftloopError(
                    f"passthrough forwarded {forwarded} of {count} messages from {source_topic!r} within {timeout:.0f}s"
                )
            messages = consumer.consume(min(batch_size, count - forwarded), timeout=0.5)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:  # only if enabled: not a failure
                        continue
                    raise DriftloopError(f"passthrough: consuming {source_topic!r} failed: {error.str()}")
                if first is None:
                    first = time.perf_counter()
                while True:
                    try:
                        producer.produce(sink_topic, value=message.value(), key=message.key())
                        break
                    except BufferError:  # local queue full: serve deliveries, then retry
                        producer.poll(0.05)
                producer.poll(0)
                forwarded += 1
        remaining = producer.flush(max(1.0, deadline - time.monotonic()))
        finished = time.perf_counter()
        if remaining or failures:
            raise DriftloopError(
                f"passthrough: {remaining} messages still queued and {len(failures)} failed "
                f"producing to {sink_topic!r}" + (f"; first: {failures[0]}" if failures else "")
            )
    finally:
        consumer.close()  # commits the consumed offsets (auto-commit), outside the measured time
    assert first is not None
    seconds = finished - first
    # Microseconds: a fast run forwards 20k messages in ~35 ms, where milliseconds were 1 % of the time.
    return {
        "events": forwarded,
        "seconds": round(seconds, 6),
        "events_per_s": round(forwarded / seconds, 1) if seconds > 0 else float(forwarded),
        "wait_for_first_s": round(first - subscribed, 3),
        "batch_size": batch_size,
    }


def demo_payloads(count: int) -> list[tuple[bytes, bytes]]:
    """`count` distinct (key, value) pairs shaped like demo events (~200 bytes of JSON each)."""
    return [(event["user_id"].encode(), encode(event)) for event, _ in itertools.islice(FraudStream(seed=1), count)]


def measure_raw_passthrough(
    bootstrap: str, count: int = 200_000, partitions: int = 4, payload: bytes | None = None
) -> dict[str, Any]:
    """Measure raw passthrough on fresh topics: pre-produce `count` messages, forward them, verify the sink.

    payload: the value of every message (default: distinct demo-shaped events keyed by user_id).
    The topics are deleted afterwards when the broker allows it.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    kafka.wait_for_broker(bootstrap)
    run = uuid.uuid4().hex[:10]
    source, sink = f"driftloop-bench-{run}-source", f"driftloop-bench-{run}-sink"
    kafka.ensure_topics(bootstrap, [source, sink], partitions)
    try:
        if payload is None:
            records = demo_payloads(count)
        else:
            records = [(f"k-{i % 2000}".encode(), payload) for i in range(count)]
        _produce_all(bootstrap, source, records)
        stats = passthrough(bootstrap, source, sink, count, group_id=f"driftloop-bench-{run}")
        received = read_topic(bootstrap, sink, count)
        if len(received) != count:
            raise DriftloopError(f"the sink {sink!r} holds {len(received)} messages, expected {count}")
        if payload is None and sorted(map(hash, received)) != sorted(hash(value) for _, value in records):
            raise DriftloopError(f"the sink {sink!r} does not hold exactly the messages produced to {source!r}")
        size = sum(len(value) for _, value in records) / count
    finally:
        _delete_topics(bootstrap, [source, sink])
    return {
        **stats,
        "partitions": partitions,
        "message_bytes": round(size, 1),
        "verified": True,
        "source_topic": source,
        "sink_topic": sink,
    }


def _produce_all(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    failures: list[Any] = []
    producer = kafka.producer(bootstrap, on_delivery=lambda err, _msg: failures.append(err) if err else None)
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining or failures:
        raise DriftloopError(f"pre-producing to {topic!r}: {remaining} still queued, {len(failures)} failed")


def read_topic(
    bootstrap: str, topic: str, expected: int, idle: float = 1.0, timeout: float = 120
) -> list[bytes | None]:
    """Every value on `topic` (all partitions, from the beginning), without a consumer-group join.

    Reads until `expected` values have arrived and then until nothing came for `idle` seconds, so
    extras show up too. (Counts come from reading, not from watermarks: Tansu 0.6 can report a high
    watermark below the last offset.)
    """
    consumer = kafka.consumer(bootstrap, f"driftloop-read-{uuid.uuid4().hex[:10]}", **{"enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        values: list[bytes | None] = []
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            batch = consumer.consume(10_000, timeout=0.2)
            for message in batch:
                if message.error() is None:
                    values.append(message.value())
            if len(values) >= expected:
                if batch:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= idle:
                    break
        return values
    finally:
        consumer.close()


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    client = kafka.admin(bootstrap)  # keep a reference: the futures die with the client
    try:
        for future in client.delete_topics(topics, operation_timeout=15).values():
            future.result(15)
    except Exception:  # cleanup is best effort; the measurement already stands
        pass


def produce_retrying(
    producer: Any, topic: str, value: bytes | None, key: bytes | None, timestamp_ms: int = 0, **options: Any
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, timestamp=timestamp_ms, **options)
            return
        except BufferError:  # the local queue is full: let librdkafka deliver, then retry
            producer.poll(0.05)


class BytesPassthrough:
    """Consume -> produce with the value untouched, in one thread, with the worker's client settings."""

    kind = "bytes_passthrough"

    def __init__(self, bootstrap: str, run: str, partitions: int, work_dir: Path):
        self.bootstrap = bootstrap
        self.input_topic, self.output_topic = f"bench-{run}-{self.kind}-in", f"bench-{run}-{self.kind}-out"
        self.dead_letter_topic: str | None = None
        self.topics = [self.input_topic, self.output_topic]
        self.partitions = partitions
        self.work_dir = work_dir
        self.group = f"bench-{run}-{self.kind}"
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None  # the kernel's, for its CPU time (load/benchmarks/cpu.py)
        self._error: BaseException | None = None

    def prepare(self) -> None:
        kafka.ensure_topics(self.bootstrap, self.topics, self.partitions)

    def loop_threads(self) -> list[tuple[int, int]]:
        return [] if self._thread_id is None else [(os.getpid(), self._thread_id)]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._guarded, name=self.kind, daemon=True)
        self._thread.start()

    def _guarded(self) -> None:
        self._thread_id = threading.get_native_id()
        try:
            self._forward()
        except BaseException as exc:  # reported by stop(), not lost in the thread
            self._error = exc

    def producer_config(self) -> dict[str, Any]:
        return {**PRODUCER_CONFIG, "on_delivery": self._delivered}

    def consumer_config(self) -> dict[str, Any]:
        return CONSUMER_CONFIG

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.failures.append(error.str())

    def _forward(self) -> None:
        producer = kafka.producer(self.bootstrap, **self.producer_config())
        consumer = kafka.consumer(self.bootstrap, self.group, **self.consumer_config())
        consumer.subscribe([self.input_topic])
        try:
            self.begin(producer, consumer)
            while not self._stop.is_set():
                messages = [m for m in consumer.consume(BATCH, timeout=WAIT_SECONDS) if m.error() is None]
                if messages:
                    self.handle(messages, producer, consumer)
                self.between_batches(producer)
            self.end(producer)
            if producer.flush(30) or self.failures:
                raise DriftloopError(
                    f"{self.kind}: records to {self.output_topic!r} were not delivered "
                    f"({self.failures[:1] or 'flush timed out'})"
                )
        finally:
            consumer.close()

    def begin(self, producer: Any, consumer: Any) -> None:
        """Called once both clients exist."""

    def handle(self, messages: list, producer: Any, consumer: Any) -> None:
        for message in messages:
            produce_retrying(producer, self.output_topic, message.value(), message.key())

    def between_batches(self, producer: Any) -> None:
        producer.poll(0)

    def end(self, producer: Any) -> None:
        """Called once the loop stopped, before the final flush."""

    def stage_seconds(self) -> dict[str, dict[str, float]] | None:
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        if self._error is not None:
            raise self._error


def _json_output(value: bytes) -> bytes:
    """What the JSON passthroughs produce for one event: decoded, one field added, encoded."""
    doc = json.loads(value)
    doc["passthrough_at"] = time.time()
    return json.dumps(doc).encode()


class JsonPassthrough(BytesPassthrough):
    """Decode each value with the standard library's json, add a field, encode it, produce it."""

    kind = "json_passthrough"

    def handle(self, messages: list, producer: Any, consumer: Any) -> None:
        for message in messages:
            produce_retrying(producer, self.output_topic, _json_output(message.value()), message.key())


class JournaledJsonPassthrough(BytesPassthrough):
    """The JSON passthrough whose batches are staged as the data plane's are: the outputs wait until the
    output journal holding them is acknowledged (streams/state/journal.py), in consumption order."""

    kind = "json_passthrough_journaled"

    def prepare(self) -> None:
        super().prepare()
        self.journal = OutputJournal(
            f"bench-{self.group}-journal-changelog",
            self.partitions,
            directory=self.work_dir / self.kind,
            memory=StateMemory(32),
        )
        self.journal.ensure_changelog(self.bootstrap)
        self.topics.append(self.journal.table.topic)
        self._staged: deque[_StagedOutputs] = deque()

    def begin(self, producer: Any, consumer: Any) -> None:
        self.journal.restore(self.bootstrap, range(self.partitions))
        self._journal_producer = kafka.producer(self.bootstrap, **JOURNAL_PRODUCER_CONFIG)

    def handle(self, messages: list, producer: Any, consumer: Any) -> None:
        staged = _StagedOutputs([(message.key(), _json_output(message.value())) for message in messages])
        entries: dict[int, list[list[Any]]] = {}
        for message, (_key, output) in zip(messages, staged.outputs):
            entries.setdefault(message.partition(), []).append([message.offset(), PREDICTED, output])
        for partition, journaled in entries.items():
            staged.waiting += self.journal.write(self._journal_producer, partition, journaled, staged.acknowledged)
        self._staged.append(staged)
        self.journal.table.memory.writer.run(STORE_RECORDS_PER_RECORD * len(messages))  # as the worker's loop

    def between_batches(self, producer: Any) -> None:
        self._journal_producer.poll(0)
        while self._staged and self._staged[0].waiting <= 0:
            staged = self._staged.popleft()
            if staged.errors:
                raise DriftloopError(f"{self.kind}: the journal was not written ({staged.errors[0]})")
            for key, output in staged.outputs:
                produce_retrying(producer, self.output_topic, output, key)
        producer.poll(0)

    def end(self, producer: Any) -> None:
        deadline = time.monotonic() + 30
        while self._staged and time.monotonic() < deadline:
            self._journal_producer.poll(0.01)
            self.between_batches(producer)
        self.journal.table.close()


class _StagedOutputs:
    def __init__(self, outputs: list[tuple[bytes | None, bytes]]):
        self.outputs = outputs
        self.waiting = 0  # journal chunks not acknowledged yet
        self.errors: list[str] = []

    def acknowledged(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.errors.append(error.str())
        self.waiting -= 1


class TransactionalJsonPassthrough(BytesPassthrough):
    """The JSON passthrough with one Kafka transaction per batch: its outputs and the consumed offsets
    commit together (Kafka's exactly-once), and readers see only committed outputs."""

    kind = "json_passthrough_transactional"

    def producer_config(self) -> dict[str, Any]:
        return {**super().producer_config(), "transactional.id": f"{self.group}-tx", "enable.idempotence": True}

    def begin(self, producer: Any, consumer: Any) -> None:
        producer.init_transactions(30)

    def handle(self, messages: list, producer: Any, consumer: Any) -> None:
        producer.begin_transaction()
        for message in messages:
            produce_retrying(producer, self.output_topic, _json_output(message.value()), message.key())
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
        )
        producer.commit_transaction(30)


PASSTHROUGHS = (BytesPassthrough, JsonPassthrough, JournaledJsonPassthrough, TransactionalJsonPassthrough)


class QuixStateful(BytesPassthrough):
    """Quix Streams' stateful job (load/benchmarks/quix_stateful.py), run by another interpreter that has
    `quixstreams` installed: a well-kept stream processor's per-key state, on the same broker and events."""

    kind = "quix_stateful"
    JOB = Path(__file__).with_name("quix_stateful.py")

    def __init__(self, bootstrap: str, run: str, partitions: int, work_dir: Path, python: str):
        super().__init__(bootstrap, run, partitions, work_dir)
        self.python = python
        self._process: subprocess.Popen | None = None

    def prepare(self) -> None:
        # Quix reads its input topic's retention from the broker, which Tansu reports only when it was set.
        config = {"retention.ms": "-1", "retention.bytes": "-1"}
        kafka.ensure_topics(self.bootstrap, self.topics, self.partitions, config=config)

    def start(self) -> None:
        command = [self.python, str(self.JOB), "--bootstrap", self.bootstrap, "--input", self.input_topic]
        command += ["--output", self.output_topic, "--group", self.group, "--state-dir", str(self.work_dir / "quix")]
        self._log = (self.work_dir / "quix.log").open("wb")
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def loop_threads(self) -> list[tuple[int, int]]:
        return [] if self._process is None else [(self._process.pid, self._process.pid)]  # Quix runs on main

    def stop(self) -> None:
        if self._process is None:
            return
        failed = self._process.poll()  # it runs until stopped: an exit before that is a failure
        self._process.terminate()
        try:
            self._process.wait(60)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._log.close()
        # Quix's own topics (its state changelog) carry the group's name: they go with the bench's topics.
        made = kafka.admin(self.bootstrap).list_topics(timeout=15).topics
        self.topics += [topic for topic in made if self.group in topic and topic not in self.topics]
        if failed is not None:
            tail = (self.work_dir / "quix.log").read_text(errors="replace")[-2000:]
            raise DriftloopError(f"{self.kind}: {self.python} {self.JOB.name} exited with {failed}:\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driftloop.load.benchmarks.passthrough",
        description="Measure raw confluent-kafka consume->produce throughput.",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        required="KAFKA_BOOTSTRAP_SERVERS" not in os.environ,
        help="HOST:PORT",
    )
    parser.add_argument("--events", type=int, default=200_000, help="messages to forward (default 200000)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the fresh topics (default 4)")
    args = parser.parse_args(argv)
    try:
        stats = measure_raw_passthrough(args.bootstrap, count=args.events, partitions=args.partitions)
    except (DriftloopError, ValueError) as exc:
        print(f"driftloop: error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
