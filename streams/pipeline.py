"""The worker's batch loop: consume, score or join, produce, checkpoint. At-least-once, never lossy.

One consumer in the group `driftloop-<spec name>` reads four topics with the range assignor, so
partition p of the two internal join topics always lands on the same worker:

    events           -> EventScorer   -> predictions, events.dlq, <pending>, Feast rows, <observations>
    outcomes         -> parse_outcome -> <outcomes-by-id> (re-keyed by event id), outcomes.dlq
    <pending>        -> OutcomeJoiner -> labeled
    <outcomes-by-id> -> OutcomeJoiner -> labeled

A prediction or outcome whose join partition this worker owns skips its internal topic and goes
straight into the join table (always, with one worker): the round trip through the broker cost two
more records per event, and the table's changelog makes it just as durable (see checkpoints below).

Offsets are committed only after everything the records produced is acknowledged by the broker:
outputs, state changelogs and Feast rows (`checkpoint`). A killed worker therefore loses nothing: its
successor restores the state tables from their changelogs and re-processes at most the records since
the last checkpoint (streams/scoring.py explains why windows do not count them twice). On a rebalance
the revoked partitions are checkpointed before they go.

In the loop a checkpoint never stalls scoring (it used to, for 40-180 ms a second: the p99 latency).
Every `checkpoint_seconds` it notes the offsets consumed so far and seals the tables' changed keys;
the next iterations write those keys to the changelogs a slice at a time (`CHANGELOG_SLICE`); once
they are all out, the checkpoint is delivered when the producer is seen with nothing in flight (or,
under a load that never lets it drain, after one `flush` at most `max_delivery_wait` later), and its
offsets are committed when the Feast rows submitted before it are written too.

The loop runs in one thread; Kafka I/O happens in librdkafka's threads, so Python spends its time on
validation, features and scoring, in batches of up to `batch_size` records.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from confluent_kafka import KafkaError, TopicPartition

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.spec import PipelineSpec
from driftloop.streams import contracts
from driftloop.streams.changelog import ChangelogTable
from driftloop.streams.join import JoinResult, Outcome, OutcomeJoiner, join_partition, parse_outcome
from driftloop.streams.scoring import EventScorer, Record
from driftloop.streams.topology import Topology

_LOG = logging.getLogger("driftloop.streams.pipeline")
CONSUMER_CONFIG = {
    "enable.auto.commit": False,
    "partition.assignment.strategy": "range",  # co-locates partition p of the two join topics
    # Tansu answers a fetch at once when a partition has data; otherwise it looks again after half the
    # remaining wait, then half of the rest, and so on, so a record arriving mid-wait is seen up to half
    # of this later: a floor on latency per hop. But at 5 ms, partitions late in a fetch request
    # starved under load (the elec2 replay stalled at ~25k events). 25 ms is both.
    "fetch.wait.max.ms": 25,
}
# Large batches amortise Tansu's per-request cost; 5 ms linger keeps p99 latency low.
PRODUCER_CONFIG = {"linger.ms": 5, "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                   "delivery.report.only.error": True}
CHANGELOG_SLICE = 500  # changed keys written per loop iteration while a checkpoint drains (~1-3 ms)


@dataclass
class _Checkpoint:
    offsets: dict[tuple[str, int], int]  # next offset per input partition, as consumed when it was taken
    feast_mark: int  # the Feast writer's position then
    changelogs_at: float | None = None  # monotonic time its changed keys were all produced
    delivered: bool = False  # every record produced before changelogs_at is acknowledged


class Pipeline:
    def __init__(self, spec: PipelineSpec, topology: Topology, bootstrap: str, *, scorer: EventScorer,
                 joiner: OutcomeJoiner, entity_states: ChangelogTable, join_table: ChangelogTable,
                 feast_sink, metrics, learner=None, join_partitions: int, worker_id: str = "worker",
                 batch_size: int = 2000, checkpoint_seconds: float = 1.0, expire_seconds: float = 30.0,
                 max_delivery_wait: float = 5.0):
        self.spec = spec
        self.topology = topology
        self.bootstrap = bootstrap
        self.scorer = scorer
        self.joiner = joiner
        self.entity_states = entity_states
        self.join_table = join_table
        self.feast = feast_sink
        self.metrics = metrics
        self.learner = learner
        self.join_partitions = join_partitions
        self.worker_id = worker_id
        self.batch_size = batch_size
        self.checkpoint_seconds = checkpoint_seconds
        self.expire_seconds = expire_seconds
        self.max_delivery_wait = max_delivery_wait
        self._delivery_errors: list[str] = []
        self._producer = kafka.producer(bootstrap, on_delivery=self._on_delivery, **PRODUCER_CONFIG)
        self._consumer = kafka.consumer(bootstrap, topology.group, on_commit=self._on_commit, **CONSUMER_CONFIG)
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._uncommitted: deque[_Checkpoint] = deque()  # oldest first
        self._draining: _Checkpoint | None = None  # the one whose changed keys are being produced
        self._assigned: set[tuple[str, int]] = set()

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        t = self.topology
        self._consumer.subscribe([t.events, t.outcomes, t.pending, t.outcomes_by_id], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        next_checkpoint = time.monotonic() + self.checkpoint_seconds
        next_expiry = time.monotonic() + self.expire_seconds
        try:
            while not stop.is_set():
                # A short wait: consume() returns early only when the batch is full, so at low rates
                # this timeout is added to every event's latency.
                messages = self._consumer.consume(self.batch_size, timeout=0.005)
                if messages:
                    self._handle(messages)
                self._producer.poll(0)
                if self.learner is not None:
                    self.learner.poll()
                now = time.monotonic()
                if now >= next_checkpoint:
                    self._begin_checkpoint()
                    self._observe_gauges()
                    next_checkpoint = now + self.checkpoint_seconds
                if self._uncommitted:
                    self._advance_checkpoints(now)
                if now >= next_expiry:
                    self._expire()
                    next_expiry = now + self.expire_seconds
            self.checkpoint()
        finally:
            self._consumer.close()  # leaves the group at once, so the partitions move without a timeout

    def _handle(self, messages: list) -> None:
        by_topic: dict[str, list] = defaultdict(list)
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    _LOG.warning("consumer: %s", error.str())
                continue
            by_topic[m.topic()].append(m)
            self._next_offsets[(m.topic(), m.partition())] = m.offset() + 1
        t = self.topology
        if by_topic.get(t.events):
            self._score(by_topic[t.events])
        if by_topic.get(t.outcomes):
            self._route_outcomes(by_topic[t.outcomes])
        if by_topic.get(t.pending) or by_topic.get(t.outcomes_by_id):
            self._join(by_topic.get(t.pending, ()), by_topic.get(t.outcomes_by_id, ()))

    def _score(self, messages: list) -> None:
        t = self.topology
        records = [Record(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value())
                   for m in messages]
        scored = self.scorer.process(records)
        started = time.perf_counter()
        produce = self._produce
        for key, value in scored.predictions:
            produce(t.predictions, value, key)
        for key, value in scored.dead_letters:
            produce(t.events_dlq, value, key)
        partitions, local, joined = self.join_partitions, self.join_table.assigned, JoinResult()
        for event_id, value in scored.pending:
            partition = join_partition(event_id, partitions)
            if partition in local:
                self.joiner.add_pending(partition, event_id, value, joined)
            else:
                produce(t.pending, value, event_id.encode(), partition)
        produce(t.observations, self._observation(scored), self.worker_id.encode())
        self._publish(joined)  # outcomes that were waiting for these predictions
        scored.stage_seconds["produce"] = time.perf_counter() - started
        if scored.feast_rows:
            self.feast.submit(scored.feast_rows)
        _record_scored(self.metrics, scored, len(records))

    def _observation(self, scored) -> bytes:
        champion = self.scorer.router.variants.get("champion")
        return contracts.observation(
            worker=self.worker_id, valid=len(scored.rows), rows=scored.rows, columns=self.spec.model_inputs,
            event_time_max=scored.event_time_max, dlq=dict(scored.dlq_reasons), unseen=dict(scored.unseen),
            missing=dict(scored.missing), champion_version=champion.version if champion else None)

    def _route_outcomes(self, messages: list) -> None:
        t = self.topology
        now = time.time()
        invalid = 0
        local, joined = self.join_table.assigned, JoinResult()
        for m in messages:
            outcome = parse_outcome(m.value(), self.spec, now)
            if isinstance(outcome, Outcome):
                partition = join_partition(outcome.event_id, self.join_partitions)
                if partition in local:
                    self.joiner.add_outcome(partition, outcome, joined)
                else:
                    self._produce(t.outcomes_by_id, m.value(), outcome.event_id.encode(), partition)
                continue
            invalid += 1
            source = contracts.Source(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key())
            self._produce(t.outcomes_dlq, contracts.dead_letter(m.value(), source, outcome.reason, outcome.detail,
                                                                outcome.field), m.key())
        if invalid:
            self.metrics.outcomes("invalid", invalid)
        self._publish(joined)

    def _join(self, pending: list, outcomes: list) -> None:
        result = JoinResult()
        now = time.time()
        for m in pending:
            self.joiner.add_pending(m.partition(), m.key().decode(), m.value(), result)
        for m in outcomes:
            outcome = parse_outcome(m.value(), self.spec, now)  # validated before it was re-keyed
            self.joiner.add_outcome(m.partition(), outcome, result)
        self._publish(result)

    def _publish(self, result: JoinResult) -> None:
        for key, value in result.labeled:
            self._produce(self.topology.labeled, value, key)
        for name, count in result.counts.items():
            self.metrics.outcomes(name, count)

    def _expire(self) -> None:
        result = JoinResult()
        partitions = sorted(p for topic, p in self._assigned if topic == self.topology.pending)
        self.joiner.expire(partitions, result)
        # counted here, with the expiry scan, not every second: it walks every waiting entry
        waiting = self.joiner.waiting()
        self.metrics.join_pending(predictions=waiting["prediction"], outcomes=waiting["outcome"])
        for name, count in result.counts.items():
            self.metrics.outcomes(name, count)

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int | None = None) -> None:
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value, key)
                else:
                    self._producer.produce(topic, value, key, partition)
                return
            except BufferError:  # the local queue is full: let librdkafka drain it, then retry
                self._producer.poll(0.05)

    def _on_commit(self, error, _partitions) -> None:
        if error is not None:  # the next checkpoint commits these offsets again, or later ones
            _LOG.warning("committing offsets failed: %s", error)

    def _on_delivery(self, error, message) -> None:
        if error is not None:
            self._delivery_errors.append(f"{message.topic()}[{message.partition()}]: {error.str()}")

    # -- checkpoints --------------------------------------------------------------------------------

    def _begin_checkpoint(self) -> None:
        """Note the offsets consumed so far and seal the changed keys; `_advance_checkpoints` does the rest."""
        if self._draining is not None or not self._next_offsets:
            return  # the last one is still writing its changelogs (it covers more then), or nothing new
        self.entity_states.seal()
        self.join_table.seal()
        self._draining = _Checkpoint(dict(self._next_offsets), self.feast.mark())
        self._next_offsets.clear()
        self._uncommitted.append(self._draining)

    def _advance_checkpoints(self, now: float) -> None:
        started = time.perf_counter()
        draining = self._draining
        if draining is not None and self.entity_states.drain(self._producer, CHANGELOG_SLICE) \
                and self.join_table.drain(self._producer, CHANGELOG_SLICE):
            draining.changelogs_at, self._draining = now, None
        written = [c for c in self._uncommitted if c.changelogs_at is not None and not c.delivered]
        if written:
            # Nothing queued, in flight or reported and not yet served by poll: every record produced so
            # far is acknowledged, or failed and its report reached `_on_delivery`.
            if len(self._producer) == 0:
                for c in written:
                    c.delivered = True
            elif now - written[0].changelogs_at >= self.max_delivery_wait:
                self._flush_producer(30.0)
                for c in written:
                    c.delivered = True
        self._check_delivered()
        # Not waiting for the broker's answer: a commit that fails is covered by the next one (offsets
        # only move forward), and a record whose commit was lost is processed again, as after a crash.
        self._commit_ready(asynchronous=True)
        self.metrics.stage("checkpoint", time.perf_counter() - started)

    def checkpoint(self, timeout: float = 30.0) -> None:
        """Make everything processed so far durable and commit it, waiting as long as that takes
        (up to `timeout` per step): on a rebalance and at shutdown."""
        started = time.perf_counter()
        self._draining = None  # the one draining (if any) completes with this one
        if self._next_offsets:
            self._uncommitted.append(_Checkpoint(dict(self._next_offsets), self.feast.mark()))
            self._next_offsets.clear()
        self.entity_states.flush_to(self._producer)
        self.join_table.flush_to(self._producer)
        self._flush_producer(timeout)
        for c in self._uncommitted:
            c.changelogs_at, c.delivered = c.changelogs_at or time.monotonic(), True
        self._check_delivered()
        self.feast.flush(timeout)
        self._commit_ready(asynchronous=False)  # a rebalance or shutdown hands the partitions over next
        self.metrics.stage("checkpoint", time.perf_counter() - started)

    def _flush_producer(self, timeout: float) -> None:
        if self._producer.flush(timeout) > 0:
            raise DriftloopError(f"the broker did not acknowledge every record within {timeout:.0f}s; "
                                 f"offsets were not committed (the records will be processed again)")

    def _check_delivered(self) -> None:
        self.entity_states.check_delivered()  # changelog records report through their own callback
        self.join_table.check_delivered()
        if self._delivery_errors:
            raise DriftloopError(f"{len(self._delivery_errors)} records were not delivered "
                                 f"(first: {self._delivery_errors[0]}); offsets were not committed")

    def _commit_ready(self, *, asynchronous: bool) -> None:
        """Commit the delivered checkpoints, oldest first, whose Feast rows are written."""
        ready: dict[tuple[str, int], int] = {}
        while self._uncommitted and self._uncommitted[0].delivered \
                and self.feast.written_through(self._uncommitted[0].feast_mark):
            ready.update(self._uncommitted.popleft().offsets)
        if ready:
            offsets = [TopicPartition(topic, p, offset) for (topic, p), offset in ready.items()]
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)

    def _observe_gauges(self) -> None:
        lags = {}
        for topic, partition in self._assigned:
            tp = TopicPartition(topic, partition)
            # cached = the high watermark of the last fetch response: Tansu's ListOffsets is unreliable
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            position = self._consumer.position([tp])[0].offset
            if high >= 0 and position >= 0:
                lags[(topic, partition)] = max(high - position, 0)
        self.metrics.consumer_lag(lags)
        self.metrics.model_versions({(self.spec.model.name, variant): serving.version
                                     for variant, serving in self.scorer.router.variants.items()})
        if self.learner is not None:
            self.metrics.live_metrics(self.learner.live.snapshot())

    # -- rebalances ---------------------------------------------------------------------------------

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        t = self.topology
        assigned = [(tp.topic, tp.partition) for tp in partitions]
        started = time.monotonic()
        states = self.entity_states.restore(self.bootstrap, [p for topic, p in assigned if topic == t.events])
        waiting = self.join_table.restore(self.bootstrap, [p for topic, p in assigned if topic == t.pending])
        self._assigned.update(assigned)
        _LOG.info("assigned %d partitions; restored %d entity states and %d waiting join entries in %.1fs",
                  len(assigned), states.keys, waiting.keys, time.monotonic() - started)

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        self.checkpoint()
        self._forget(partitions)

    def _on_lost(self, consumer, partitions: list[TopicPartition]) -> None:
        # Another worker owns them already: committing would be refused; their records are replayed there.
        lost = {(tp.topic, tp.partition) for tp in partitions}
        for offsets in [self._next_offsets, *(c.offsets for c in self._uncommitted)]:
            for key in lost & offsets.keys():
                del offsets[key]
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        t = self.topology
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        self._assigned.difference_update(revoked)
        events = [p for topic, p in revoked if topic == t.events]
        self.entity_states.drop(events)
        self.scorer.forget(events)
        self.join_table.drop([p for topic, p in revoked if topic == t.pending])


def _record_scored(metrics, scored, consumed: int) -> None:
    """Batch-level metric updates: a handful of calls per batch, not per event."""
    metrics.batch(consumed, scored.stage_seconds)
    metrics.events_predicted(len(scored.predictions))
    for reason, count in scored.dlq_reasons.items():
        metrics.dead_lettered(reason, count)
    for (version, variant), count in scored.served.items():
        metrics.predictions(version, variant, count)
    for field, count in scored.unseen.items():
        metrics.unseen_categories(field, count)
    for field, count in scored.missing.items():
        metrics.missing_values(field, count)
    metrics.event_latencies(scored.latencies)
