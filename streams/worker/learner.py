"""Online learning and live metrics from the `labeled` topic (the training log).

Every worker reads every partition of `labeled` (assigned, not a consumer group), so each worker's
River models learn from all outcomes, not only from its own join partitions, and every worker reports
the same rolling metrics per model version. A restarted worker reads the log from the start and lets
each model learn only rows joined after that model version was registered (`ModelRouter.learn`), which
brings a reloaded snapshot back to the state it had.

Rolling metrics use the score the event was served with (recorded at prediction time), so they are
prequential: each outcome is scored before the model learns from it.

`labeled` is a public topic: a record that is not a labeled record (anyone can produce to it) is
skipped and counted (`driftloop_bad_records_total`), and an event id seen again (the same join
re-emitted after a worker restart) is learned once.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from driftloop import kafka
from driftloop.models.live_metrics import LiveMetrics
from driftloop.models.routing import ModelRouter
from driftloop.streams.worker.validation import RecentIds

_LOG = logging.getLogger("driftloop.streams.worker.learner")
LEARNER_FETCH_WAIT_MS = 500


class _Learnable(msgspec.Struct):
    """The fields of a `labeled` record the learner reads."""

    event_id: str
    features: dict[str, Any]
    label: int
    score: float
    model_version: int


_decode = msgspec.json.Decoder(_Learnable).decode


class LabeledLearner:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        router: ModelRouter,
        live: LiveMetrics,
        *,
        group: str,
        metrics=None,
        batch_size: int = 2000,
        recent_ids: int = 200_000,
    ):
        self.router = router
        self.live = live
        self.metrics = metrics
        self.batch_size = batch_size
        self._recent = RecentIds(recent_ids)
        # A group id is required by librdkafka even for assign(); nothing is ever committed under it.
        # Outcomes arrive late by nature, so half a second more costs the models nothing, while on the
        # embedded broker every fetch, and every re-check within its wait, lists the batches stored in
        # the partition (README, "What `driftloop up` starts") and `labeled` only grows: 2 fetches a
        # second instead of 40.
        self._consumer = kafka.consumer(
            bootstrap,
            f"{group}-learner",
            **{"enable.auto.commit": False, "fetch.wait.max.ms": LEARNER_FETCH_WAIT_MS, **kafka.BOUNDED_CONSUMER},
        )
        partitions = self._consumer.list_topics(topic, timeout=15).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.learned = 0

    def poll(self) -> int:
        """Learn from whatever labeled records are available now; never blocks. Returns records read."""
        messages = self._consumer.consume(self.batch_size, timeout=0)
        rows, labels, times, read = [], [], [], 0
        for m in messages:
            if (error := m.error()) is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    _LOG.warning("labeled consumer: %s", error.str())
                continue
            read += 1
            try:
                record = _decode(m.value() or b"")
                if record.label not in (0, 1) or not math.isfinite(record.score):
                    raise ValueError(f"label {record.label!r}, score {record.score!r}")
            except (msgspec.DecodeError, ValueError) as exc:
                self._unreadable(m, exc)
                continue
            if self._recent.seen_before(record.event_id):
                continue
            rows.append(record.features)
            labels.append(record.label)
            times.append(m.timestamp()[1])
            self.live.update(record.model_version, record.label, record.score)
        if rows:
            self.learned += self.router.learn(rows, labels, times)
        return read

    def _unreadable(self, message, exc: Exception) -> None:
        _LOG.warning(
            "skipping %s[%d]@%d: not a labeled record (%s)", message.topic(), message.partition(), message.offset(), exc
        )
        if self.metrics is not None:
            self.metrics.bad_records(message.topic())

    def close(self) -> None:
        self._consumer.close()
