"""`driftloop tail` and `driftloop produce`: a topic from a terminal, on the Kafka client driftloop itself runs.

kcat as Debian 12 ships it (1.7.1, librdkafka 2.0.2) cannot produce to the embedded Tansu broker at all
(docs/resources.md says exactly what works); these two commands work against it and against Kafka.

- `tail(...)` prints a topic's records as they arrive: from the end (announced once every partition's end
  is found, and only records appended after that are shown) or from the beginning, until `limit` records,
  the end of every partition (`exit_at_end`), or Ctrl-C. Without a consumer group: nothing is committed.
  A record is one line: its value (with `key_separator`: key, separator, value), or with `as_json` one
  JSON object with topic, partition, offset, timestamp_ms, key and value. Bytes that are not UTF-8 are
  shown, not dropped: escaped (\\xNN) in text, base64 (`key_b64`, `value_b64`) in JSON.
- `produce(...)` sends each line (without its line break) as one record's value, or with
  `key_separator` the part before the first separator as its key; the bytes go out as they are (the
  worker validates them, and dead-letters what it cannot score). A line that cannot be sent (empty, or
  without the separator) is reported by number and not sent; the others are. Returns once every record
  is acknowledged; DriftloopError when one is not.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from driftloop import kafka
from driftloop.errors import DriftloopError

DELIVERY_TIMEOUT = 30.0  # seconds for the broker to acknowledge what was produced


def format_record(message: Any, *, as_json: bool, key_separator: str | None) -> str:
    """One line for one consumed record."""
    key, value = message.key(), message.value()
    if as_json:
        record: dict[str, Any] = {
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp_ms": message.timestamp()[1],
        }
        for name, data in (("key", key), ("value", value)):
            try:
                record[name] = None if data is None else data.decode("utf-8")
            except UnicodeDecodeError:
                record[f"{name}_b64"] = base64.b64encode(data).decode("ascii")
        return json.dumps(record, ensure_ascii=False)
    text = "" if value is None else value.decode("utf-8", "backslashreplace")
    if key_separator is None:
        return text
    return ("" if key is None else key.decode("utf-8", "backslashreplace")) + key_separator + text


def tail(
    bootstrap: str,
    topic: str,
    *,
    from_beginning: bool,
    limit: int | None,
    exit_at_end: bool,
    show: Callable[[Any], None],
    announce: Callable[[str], None],
) -> int:
    """Show the topic's records (see the module docstring); returns how many were shown."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    client = kafka.consumer(
        bootstrap,
        f"driftloop-tail-{uuid.uuid4().hex[:10]}",
        **{"enable.auto.commit": False, "enable.partition.eof": True},
    )
    shown = 0
    try:
        metadata = client.list_topics(timeout=15).topics
        if topic not in metadata:
            raise DriftloopError(f"no topic {topic!r} on the broker at {bootstrap}")
        partitions = set(metadata[topic].partitions)
        if from_beginning:
            client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            announce(f"reading {topic} from its beginning ({len(partitions)} partitions)")
        else:
            kafka.assign_at_end(client, [topic], timeout=15)
            announce(f"tailing {topic} from its end ({len(partitions)} partitions); Ctrl-C stops")
        # partitions that have not reported their end yet (from the end, each has, to be settled)
        unfinished = set(partitions) if from_beginning else set()
        while limit is None or shown < limit:
            for message in client.consume(500, timeout=0.5):
                error = message.error()
                if error is None:
                    show(message)
                    shown += 1
                    if shown == limit:
                        break
                elif error.code() == KafkaError._PARTITION_EOF:
                    unfinished.discard(message.partition())
                elif error.fatal():
                    raise DriftloopError(f"reading {topic!r}: {error.str()}")
                else:
                    announce(f"reading {topic}: {error.str()}")
            if exit_at_end and not unfinished:
                break
    finally:
        client.close()
    return shown


@dataclass
class Produced:
    records: int = 0
    skipped: int = 0  # lines reported and not sent


def produce(
    bootstrap: str, topic: str, lines: Iterable[bytes], *, key_separator: str | None, report: Callable[[str], None]
) -> Produced:
    """Send each line as a record (see the module docstring)."""
    if topic not in kafka.admin(bootstrap).list_topics(timeout=15).topics:
        raise DriftloopError(f"no topic {topic!r} on the broker at {bootstrap}")
    separator = None if key_separator is None else key_separator.encode()
    producer = kafka.producer(bootstrap)
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error.str())

    result = Produced()
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix(b"\n").removesuffix(b"\r")
        key, value = None, line
        if not line:
            report(f"line {number}: empty; not sent")
            result.skipped += 1
            continue
        if separator is not None:
            key, found, value = line.partition(separator)
            if not found:
                report(f"line {number}: no key separator {key_separator!r}; not sent")
                result.skipped += 1
                continue
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:  # the client's queue is full: let it send, then try again
                producer.poll(0.5)
        producer.poll(0)
        result.records += 1
    unsent = producer.flush(DELIVERY_TIMEOUT)
    if failures or unsent:
        problem = failures[0] if failures else f"not acknowledged within {DELIVERY_TIMEOUT:g}s"
        raise DriftloopError(
            f"{len(failures) + unsent} of {result.records} records were not delivered to {topic!r}: {problem}"
        )
    return result
