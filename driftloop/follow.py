"""Following what arrives: the records of a topic, the lines of a child's log, each read as it grows.

`TopicFollower` reads a topic from its beginning without a consumer group (nothing is committed);
`poll()` returns the JSON objects that arrived since the last call, skipping what is not one (anyone may
produce to a topic). `LogFollower` returns the complete lines appended to a file since the last call.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from driftloop import kafka
from driftloop.errors import DriftloopError

# A busy Tansu answers a fetch that waits less than its read takes with nothing, again and again: a reader
# that is not latency-bound waits longer.
_FETCH_WAIT_MS = 500


class TopicFollower:
    """New JSON-object records of a topic, in the order they are read."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, timeout: float = 15.0):
        """DriftloopError when the broker does not answer within `timeout` seconds."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        from driftloop.load.run_records import json_object

        self._decode = json_object
        self.topic = topic
        self._consumer = kafka.consumer(
            bootstrap,
            f"driftloop-follow-{uuid.uuid4().hex[:10]}",
            **{"enable.auto.commit": False, "fetch.wait.max.ms": _FETCH_WAIT_MS},
        )
        try:
            # the stack creates it; a bare broker may not have it
            kafka.ensure_topics(bootstrap, [topic], partitions, timeout=timeout)
            found = self._consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        except KafkaException as exc:
            self._consumer.close()
            raise DriftloopError(f"cannot read {topic} at {bootstrap}: {exc.args[0].str()}") from None
        except DriftloopError:
            self._consumer.close()
            raise
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in found])

    def poll(self) -> list[dict[str, Any]]:
        from confluent_kafka import KafkaError

        records = []
        for message in self._consumer.consume(1000, timeout=0):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF and error.fatal():
                    raise DriftloopError(f"reading {self.topic}: {error.str()}")
                continue
            try:
                records.append(self._decode(message.value()))
            except ValueError:
                continue
        return records

    def close(self) -> None:
        self._consumer.close()


class LogFollower:
    """Complete lines appended to `path` after byte `offset` (a line still being written waits for its end)."""

    def __init__(self, path: Path, offset: int = 0):
        self.path, self.offset = path, offset

    def poll(self) -> list[str]:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                text = log.read()
        except OSError:  # not created yet
            return []
        complete = text[: text.rfind(b"\n") + 1]
        self.offset += len(complete)
        return complete.decode(errors="replace").splitlines()
