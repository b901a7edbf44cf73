"""The raw baseline every benchmark compares to: a bare confluent-kafka consume -> produce loop.

`passthrough()` forwards messages from one topic to another with nothing in between (no
deserialisation, no Faust), so its throughput is the ceiling the pipeline can approach on the same
broker and machine. `measure_raw_passthrough()` sets up fresh topics, pre-loads them, runs the loop,
checks the sink and returns the numbers; `python -m driftloop.load.benchmarks.passthrough --bootstrap HOST:PORT
--events N` prints them as JSON.

The clock starts at the first message received, so the consumer group's join (about half the
session timeout on Tansu) is reported separately as `wait_for_first_s` and not counted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.load.generator import FraudStream, encode


def passthrough(bootstrap: str, source_topic: str, sink_topic: str, count: int, *, group_id: str,
                batch_size: int = 1000, timeout: float = 120) -> dict[str, Any]:
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
                raise DriftloopError(f"passthrough forwarded {forwarded} of {count} messages from {source_topic!r} "
                                     f"within {timeout:.0f}s")
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
            raise DriftloopError(f"passthrough: {remaining} messages still queued and {len(failures)} failed "
                                 f"producing to {sink_topic!r}" + (f"; first: {failures[0]}" if failures else ""))
    finally:
        consumer.close()  # commits the consumed offsets (auto-commit), outside the measured time
    assert first is not None
    seconds = finished - first
    # Microseconds: a fast run forwards 20k messages in ~35 ms, where milliseconds were 1 % of the time.
    return {"events": forwarded, "seconds": round(seconds, 6),
            "events_per_s": round(forwarded / seconds, 1) if seconds > 0 else float(forwarded),
            "wait_for_first_s": round(first - subscribed, 3), "batch_size": batch_size}


def demo_payloads(count: int) -> list[tuple[bytes, bytes]]:
    """`count` distinct (key, value) pairs shaped like demo events (~200 bytes of JSON each)."""
    return [(event["user_id"].encode(), encode(event)) for event, _ in itertools.islice(FraudStream(seed=1), count)]


def measure_raw_passthrough(bootstrap: str, count: int = 200_000, partitions: int = 4,
                            payload: bytes | None = None) -> dict[str, Any]:
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
    return {**stats, "partitions": partitions, "message_bytes": round(size, 1), "verified": True,
            "source_topic": source, "sink_topic": sink}


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


def read_topic(bootstrap: str, topic: str, expected: int, idle: float = 1.0,
               timeout: float = 120) -> list[bytes | None]:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m driftloop.load.benchmarks.passthrough",
                                     description="Measure raw confluent-kafka consume->produce throughput.")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                        required="KAFKA_BOOTSTRAP_SERVERS" not in os.environ, help="HOST:PORT")
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
