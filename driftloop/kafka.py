"""Kafka client helpers shared by the CLI, the workers, the load tools and the tests."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from driftloop.errors import DriftloopError

# Tansu completes a consumer group's first join only after half the session timeout, and Kafka
# itself uses the session timeout to notice dead members: 6 s keeps both short.
CONSUMER_DEFAULTS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "auto.offset.reset": "earliest"}
PRODUCER_DEFAULTS = {"linger.ms": 5, "enable.idempotence": False, "acks": "all"}
# What the worker's clients may hold in librdkafka's queues. By default a consumer prefetches up to 64 MB
# and a producer buffers up to 1 GB: memory a worker behind a backlog fills and its state budget cannot
# see. 16 MB of events is seconds of them at the worker's rate; a full producer queue makes the worker
# poll until there is room (every worker produce call retries on BufferError).
BOUNDED_CONSUMER = {"queued.max.messages.kbytes": 16_384}
BOUNDED_PRODUCER = {"queue.buffering.max.kbytes": 65_536}
# librdkafka otherwise writes its own lines straight to stderr; route them through Python logging.
_LOGGER = logging.getLogger("driftloop.kafka.client")
_LOG = logging.getLogger("driftloop.kafka")


def _base(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": _LOGGER}


def admin(bootstrap: str, **overrides: Any) -> AdminClient:
    return AdminClient({**_base(bootstrap), **overrides})


def producer(bootstrap: str, **overrides: Any) -> Producer:
    return Producer({**_base(bootstrap), **PRODUCER_DEFAULTS, **overrides})


def consumer(bootstrap: str, group_id: str, **overrides: Any) -> Consumer:
    return Consumer({**_base(bootstrap), "group.id": group_id, **CONSUMER_DEFAULTS, **overrides})


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a broker answers a metadata request with at least one broker listed."""
    try:
        # A probe expects refusals while a broker starts: keep librdkafka quiet about them.
        metadata = admin(bootstrap, log_level=0).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def wait_for_broker(bootstrap: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker_answers(bootstrap, timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
            return
    raise DriftloopError(
        f"no Kafka broker answered a metadata request at {bootstrap} within {timeout:.0f}s "
        f"(check KAFKA_BOOTSTRAP_SERVERS)"
    )


def ensure_topics(
    bootstrap: str, names: Iterable[str], partitions: int, timeout: float = 15.0, config: dict[str, str] | None = None
) -> list[str]:
    """Create the topics that do not exist yet (with `config`); return the names created. Existing ones are
    left as they are."""
    client = admin(bootstrap)
    existing = set(client.list_topics(timeout=timeout).topics)
    missing = [name for name in dict.fromkeys(names) if name not in existing]
    if not missing:
        return []
    futures = client.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1, config=config or {}) for n in missing],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another process won the race: fine
                raise DriftloopError(f"cannot create topic {name!r}: {exc.args[0].str()}") from None
    _wait_until_visible(client, missing, timeout)
    return missing


def _wait_until_visible(client: AdminClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = client.list_topics(timeout=timeout).topics
        if all(name in topics and topics[name].partitions for name in names):
            return
        time.sleep(0.1)
    raise DriftloopError(f"topics {names} were created but did not appear in metadata within {timeout:.0f}s")


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    since: float | None = None,
    until: float | None = None,
    decode: Callable[[bytes], Any] | None = None,
    timeout: float = 10.0,
) -> list[Any]:
    """The values of `topic` (decoded, when `decode` is given), in Kafka-timestamp order.

    Read from the beginning to each partition's end, rather than seeking back from the high watermark,
    because Tansu's ListOffsets answers are not reliable. With `since`/`until` (epoch seconds) only
    records stamped in [since, until] are kept, and a partition is done at its first record after
    `until`, so a topic that keeps growing while it is read still ends. A value `decode` raises on
    (msgspec/JSON/type errors) is skipped: another client's garbage on a shared topic must not stop a
    report. DriftloopError when the topic cannot be read within `timeout` seconds.
    """
    import msgspec

    since_ms = -math.inf if since is None else since * 1000
    until_ms = math.inf if until is None else until * 1000
    # A busy Tansu answers fetches that wait less than its read takes with nothing, indefinitely.
    client = consumer(
        bootstrap,
        f"driftloop-reader-{uuid.uuid4().hex[:10]}",
        **{"enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 500},
    )
    try:
        metadata = client.list_topics(topic, timeout=min(timeout, 15)).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return []
        kept: list[tuple[int, Any]] = []
        for message in consume_to_end(
            client, topic, metadata.partitions, timeout=timeout, past_end=lambda m: m.timestamp()[1] > until_ms
        ):
            stamp = message.timestamp()[1]
            if stamp >= since_ms:
                value = message.value()
                if decode is not None:
                    try:
                        value = decode(value or b"")
                    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError):
                        continue
                kept.append((stamp, value))
        kept.sort(key=lambda pair: pair[0])
        return [value for _, value in kept]
    finally:
        client.close()


def assign_at_end(client: Consumer, topics: list[str], *, timeout: float) -> None:
    """Assign every partition of `topics` to `client` (created with enable.partition.eof) at its end, and return
    once each has reported end-of-partition or delivered a record, so that what the client consumes next was
    appended after this returned. Records delivered meanwhile are dropped: they were there before. (Tansu's
    ListOffsets can resolve the end too low, and the client then first reads an old tail.) No group is joined.
    DriftloopError when a topic does not exist, or when the ends are not found within `timeout` seconds."""
    from confluent_kafka import OFFSET_END, KafkaError, TopicPartition

    metadata = client.list_topics(timeout=timeout).topics
    missing = [topic for topic in topics if topic not in metadata]
    if missing:
        raise DriftloopError(f"no topic {missing[0]!r} on the broker")
    partitions = [TopicPartition(topic, p, OFFSET_END) for topic in topics for p in metadata[topic].partitions]
    client.assign(partitions)
    unsettled = {(tp.topic, tp.partition) for tp in partitions}
    deadline = time.monotonic() + timeout
    while unsettled:
        if time.monotonic() > deadline:
            raise DriftloopError(
                f"could not find where {' and '.join(topics)} end within {timeout:.0f}s "
                f"(partitions still unsettled: {sorted(unsettled)})"
            )
        for message in client.consume(10_000, timeout=0.2):
            error = message.error()
            if error is None or error.code() == KafkaError._PARTITION_EOF:
                unsettled.discard((message.topic(), message.partition()))


def consume_to_end(
    client: Consumer,
    topic: str,
    partitions: Iterable[int],
    *,
    timeout: float,
    batch: int = 10_000,
    poll: float = 0.2,
    past_end: Callable[[Any], bool] | None = None,
) -> Iterator[Any]:
    """Assign `partitions` of `topic` to `client` (created with enable.partition.eof) from their beginning and
    yield their records until each has reported its end, or a record `past_end` says lies beyond what is
    wanted (that record is not yielded). Later records are not read: a topic that keeps growing still ends.

    The end is where the consumer reports end-of-partition, because Tansu's ListOffsets (the watermarks)
    can be wrong. DriftloopError on a fatal consumer error or when `timeout` seconds pass first.
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    open_partitions = set(partitions)
    client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in open_partitions])
    deadline = time.monotonic() + timeout
    read = 0
    while open_partitions:
        if time.monotonic() > deadline:
            raise DriftloopError(
                f"could not read topic {topic!r} to its end within {timeout:g}s ({read} records "
                f"read, partitions still open: {sorted(open_partitions)})"
            )
        for message in client.consume(batch, timeout=poll):
            partition = message.partition()
            if partition not in open_partitions:
                continue  # its end was reached already
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(partition)
                elif error.fatal():
                    raise DriftloopError(f"reading {topic!r}: {error.str()}")
                else:
                    _LOG.warning("reading %s: %s", topic, error.str())
                continue
            if past_end is not None and past_end(message):
                open_partitions.discard(partition)
                continue
            read += 1
            yield message
