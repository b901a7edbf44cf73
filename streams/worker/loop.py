"""The worker's batch loop: consume, score or join, produce, checkpoint. Nothing lost, nothing counted twice.

One consumer in the group `driftloop-<spec name>` reads four topics with the range assignor, so
partition p of the two internal join topics always lands on the same worker:

    events           -> EventScorer   -> predictions, events.dlq, <pending>, Feast rows, <observations>
    outcomes         -> parse_outcome -> <outcomes-by-id> (re-keyed by event id), outcomes.dlq
    <pending>        -> OutcomeJoiner -> labeled
    <outcomes-by-id> -> OutcomeJoiner -> labeled

A prediction or outcome whose join partition this worker owns skips its internal topic and goes
straight into the join table (always, with one worker): the round trip through the broker cost two
more records per event, and the table's changelog makes it just as durable.

A scored batch is *staged*: its journal entries (streams/state/journal.py) are produced first, and its
outputs (predictions, dead letters, join records, Feast rows, the drift observation) are released
only once the broker has acknowledged them, in consumption order. The loop does not wait for that:
it goes on with the next batch while the acknowledgements come back.

Offsets are committed by the checkpoint protocol (streams/state/checkpoint.py, which also proves that a
restart is exact): only for released records, and only after their outputs, the state they changed
and their Feast rows are all durable. One record never stops the loop: a record that cannot be
validated, featurised, scored or produced ends in the DLQ with its reason; an internal or outcome
record that cannot be read is dead-lettered or counted. On a rebalance the revoked partitions are
checkpointed before they go.

The loop runs in one thread; Kafka I/O happens in librdkafka's threads, so Python spends its time on
validation, features and scoring. It also writes the state stores (streams/state/store.py, StoreWriter),
a batch of about 1,000 records at a time: while it waits for a fetch or a journal acknowledgement, and
after each batch in proportion to the records it consumed, so a backlog does not starve them. How many
records a consume call asks for, and how long it waits for them, is steered by the spec's latency
objective (`slo`, streams/worker/slo.py); its burn is measured on every prediction. Circuit breakers
(streams/worker/breaker.py) that a batch opened or closed are handed to `on_breaker` (the worker audits
them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.spec import PipelineSpec
from driftloop.streams import contracts
from driftloop.streams.state.changelog import ChangelogTable
from driftloop.streams.state.checkpoint import Checkpoints
from driftloop.streams.state.journal import OutputJournal
from driftloop.streams.topology import Topology
from driftloop.streams.worker.breaker import Change
from driftloop.streams.worker.join import JoinResult, Outcome, OutcomeJoiner, join_partition, parse_outcome
from driftloop.streams.worker.scoring import EventScorer, Record, ScoredBatch, decode_pending
from driftloop.streams.worker.slo import SPIN_GUARD, BatchController, Setting, SloBurn

_LOG = logging.getLogger("driftloop.streams.worker.loop")
CONSUMER_CONFIG = {
    "enable.auto.commit": False,
    "partition.assignment.strategy": "range",  # co-locates partition p of the two join topics
    # Tansu answers a fetch at once when a partition has data; otherwise it looks again after half the
    # remaining wait, then half of the rest, and so on, so a record arriving mid-wait is seen up to half
    # of this later: a floor on latency per hop. But at 5 ms, partitions late in a fetch request
    # starved under load (the elec2 replay stalled at ~25k events). 25 ms is both.
    "fetch.wait.max.ms": 25,
    **kafka.BOUNDED_CONSUMER,
}
# Large batches amortise Tansu's per-request cost; 5 ms linger keeps p99 latency low.
PRODUCER_CONFIG = {
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "delivery.report.only.error": True,
    **kafka.BOUNDED_PRODUCER,
}
# The journal goes out at once: a batch's outputs wait for its acknowledgement.
JOURNAL_PRODUCER_CONFIG = {
    "linger.ms": 0,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 100_000,
    **kafka.BOUNDED_PRODUCER,
}
# Changelog records report every delivery: a checkpoint commits once they are all in.
CHANGELOG_PRODUCER_CONFIG = {
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    **kafka.BOUNDED_PRODUCER,
}
# Store records written per consumed record after each batch: each event changes its entity's state and adds
# a waiting join (and its journal chunk's share); idle moments write more.
STORE_RECORDS_PER_RECORD = 3
CHANGELOG_SLICE = 500  # changed keys written per loop iteration while a checkpoint drains (~1-3 ms)
_OBSERVATION_ROWS = 1000  # rows per observation record: a wide spec's batch stays far below 1 MB


@dataclass
class _Staged:
    """A scored batch waiting for its journal chunks to be acknowledged."""

    scored: ScoredBatch
    offsets: dict[tuple[str, int], int]  # next offset per events partition once it is released
    consumed: int
    asked: int  # records the consume call asked for (of every topic) ...
    fetched: int  # ... and got
    waiting: int = 0  # journal chunks not yet acknowledged
    errors: list[str] = field(default_factory=list)

    def acknowledged(self, error: KafkaError | None, _message) -> None:
        if error is not None:
            self.errors.append(error.str())
        self.waiting -= 1


class Pipeline:
    def __init__(
        self,
        spec: PipelineSpec,
        topology: Topology,
        bootstrap: str,
        *,
        scorer: EventScorer,
        joiner: OutcomeJoiner,
        entity_states: ChangelogTable,
        join_table: ChangelogTable,
        journal: OutputJournal,
        feast_sink,
        metrics,
        learner=None,
        join_partitions: int,
        worker_id: str = "worker",
        on_breaker: Callable[[Change], None] | None = None,
        checkpoint_seconds: float = 1.0,
        expire_seconds: float = 30.0,
        max_delivery_wait: float = 5.0,
    ):
        self.spec = spec
        self.topology = topology
        self.bootstrap = bootstrap
        self.scorer = scorer
        self.joiner = joiner
        self.entity_states = entity_states
        self.join_table = join_table
        self.journal = journal
        self.feast = feast_sink
        self.metrics = metrics
        self.learner = learner
        self.join_partitions = join_partitions
        self.worker_id = worker_id
        self.on_breaker = on_breaker
        slo, now = spec.slo, time.monotonic()
        self.controller = BatchController(
            slo.p99_ms / 1000,
            min_batch=slo.min_batch,
            max_batch=slo.max_batch,
            max_fetch_wait=slo.max_fetch_wait_ms / 1000,
            now=now,
        )
        self.burn = SloBurn(slo.p99_ms / 1000, slo.window)
        self._fetched = 0  # records of the last consume call
        self.checkpoint_seconds = checkpoint_seconds
        self.expire_seconds = expire_seconds
        self._producer = kafka.producer(bootstrap, on_delivery=self._on_delivery, **PRODUCER_CONFIG)
        self._journal_producer = kafka.producer(bootstrap, **JOURNAL_PRODUCER_CONFIG)
        self._consumer = kafka.consumer(bootstrap, topology.group, on_commit=self._on_commit, **CONSUMER_CONFIG)
        self.checkpoints = Checkpoints(
            kafka.producer(bootstrap, **CHANGELOG_PRODUCER_CONFIG),
            self._consumer,
            [entity_states, join_table, journal.table],
            feast_sink,
            metrics,
            on_committed=self._committed,
            slice_keys=CHANGELOG_SLICE,
            max_delivery_wait=max_delivery_wait,
        )
        self._next_offsets: dict[tuple[str, int], int] = {}  # of released records, since the last seal
        self._staged: deque[_Staged] = deque()  # oldest first
        self._store_writer = entity_states.memory.writer  # every table's: they share one memory budget
        self._assigned: set[tuple[str, int]] = set()

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        t = self.topology
        self._consumer.subscribe(
            [t.events, t.outcomes, t.pending, t.outcomes_by_id],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        next_checkpoint = time.monotonic() + self.checkpoint_seconds
        next_expiry = time.monotonic() + self.expire_seconds
        try:
            while not stop.is_set():
                # consume() returns early only when the batch is full, so at low rates the wait is added
                # to every event's latency: the controller trades it against fuller batches.
                setting = self.controller.tick(time.monotonic())
                messages = self._consumer.consume(setting.batch_size, timeout=self._spend_wait(setting))
                self._fetched = len(messages)
                if messages:
                    # outputs whose journal chunks were acknowledged meanwhile leave before this batch is scored
                    self._journal_producer.poll(0)
                    self._release_acknowledged()
                    self._handle(messages, setting.batch_size)
                    self._store_writer.run(STORE_RECORDS_PER_RECORD * len(messages))  # keeps up behind a backlog
                self._journal_producer.poll(0)
                self._release_acknowledged()
                self._producer.poll(0)
                self.checkpoints.producer.poll(0)
                if self.learner is not None:
                    self.learner.poll()
                now = time.monotonic()
                over_budget = self.entity_states.memory.over_budget()  # changed values in memory
                if over_budget:
                    self._store_writer.finish()  # what waits for its write cannot leave memory before
                if (now >= next_checkpoint or over_budget) and not self.checkpoints.draining:
                    self._quiesce(30.0)
                    self.checkpoints.seal(self._take_offsets())
                    self._observe_gauges()
                    next_checkpoint = now + self.checkpoint_seconds
                self.checkpoints.advance(now)
                if now >= next_expiry:
                    self._expire()
                    next_expiry = now + self.expire_seconds
            self.checkpoint()
        finally:
            self._consumer.close()  # leaves the group at once, so the partitions move without a timeout

    def _spend_wait(self, setting: Setting) -> float:
        """Unless behind a backlog (the last consume call came back full), spend the fetch wait on the
        staged batches' journal acknowledgements, releasing their outputs as they come (a consume call would
        hold them for its whole wait), and on the state stores' writes, a batch at a time. Returns what is
        left of the wait for the consume call."""
        if self._fetched >= setting.batch_size:
            return setting.fetch_wait
        writer = self._store_writer
        deadline = time.monotonic() + setting.fetch_wait
        while (left := deadline - time.monotonic()) > 0:
            if not writer.idle:
                writer.step()
                self._journal_producer.poll(0)
            elif self._staged:
                self._journal_producer.poll(left)  # returns with the first acknowledgement
            else:
                break
            self._release_acknowledged()
        return max(deadline - time.monotonic(), SPIN_GUARD)

    def _handle(self, messages: list, asked: int) -> None:
        by_topic: dict[str, list] = defaultdict(list)
        for m in messages:
            error = m.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    _LOG.warning("consumer: %s", error.str())
                continue
            by_topic[m.topic()].append(m)
        t = self.topology
        if by_topic.get(t.events):
            self._score(by_topic[t.events], asked)
        for topic, messages_of_topic in by_topic.items():  # not scored: these count as handled at once
            if topic != t.events:
                for m in messages_of_topic:
                    self._next_offsets[(topic, m.partition())] = m.offset() + 1
        if by_topic.get(t.outcomes):
            self._route_outcomes(by_topic[t.outcomes])
        if by_topic.get(t.pending) or by_topic.get(t.outcomes_by_id):
            self._join(by_topic.get(t.pending, []), by_topic.get(t.outcomes_by_id, []))

    def _score(self, messages: list, asked: int) -> None:
        records = [Record(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value()) for m in messages]
        scored = self.scorer.process(records)
        for change in scored.breaker_changes:
            _LOG.warning("%s: %s", change.action.replace("_", " "), change.reason)
            self.metrics.breaker_change(change.action)
            if self.on_breaker is not None:
                self.on_breaker(change)
        offsets = {(m.topic(), m.partition()): m.offset() + 1 for m in messages}
        staged = _Staged(scored, offsets, len(records), asked, self._fetched)
        for partition, entries in scored.journal.items():
            staged.waiting += self.journal.write(self._journal_producer, partition, entries, staged.acknowledged)
        self._staged.append(staged)
        self._release_acknowledged()  # at once when nothing was journaled (every record was skipped)

    def _release_acknowledged(self) -> None:
        while self._staged and self._staged[0].waiting <= 0:
            staged = self._staged.popleft()
            if staged.errors:
                raise DriftloopError(
                    f"the output journal was not written ({staged.errors[0]}); the batch's "
                    f"outputs were not released and its records will be processed again"
                )
            self._release(staged)

    def _release(self, staged: _Staged) -> None:
        t, scored = self.topology, staged.scored
        started = time.perf_counter()
        produce = self._produce
        for (key, value), record in zip(scored.predictions, scored.sources):
            try:
                produce(t.predictions, value, key)
            except KafkaException as exc:  # refused by the client at once, e.g. too large: the event goes to the DLQ
                self._prediction_refused(record, exc, scored)
        for dlq_key, envelope in scored.dead_letters:
            produce(t.events_dlq, envelope, dlq_key)
        partitions, local, joined = self.join_partitions, self.join_table.assigned, JoinResult()
        waiting_here: defaultdict[int, list[tuple[str, bytes]]] = defaultdict(list)
        for event_id, value in scored.pending:
            partition = join_partition(event_id, partitions)
            if partition in local:
                waiting_here[partition].append((event_id, value))
            else:
                produce(t.pending, value, event_id.encode(), partition)
        for partition, pendings in waiting_here.items():
            self.joiner.add_pendings(partition, pendings, joined)
        for observation in self._observations(scored):
            produce(t.observations, observation, self.worker_id.encode())
        self._publish(joined)  # outcomes that were waiting for these predictions
        scored.stage_seconds["produce"] = time.perf_counter() - started
        if scored.feast_rows:
            self.feast.submit(scored.feast_rows)
        self._next_offsets.update(staged.offsets)
        _record_scored(self.metrics, scored, staged.consumed)
        now = time.monotonic()
        self.metrics.slo_events(len(scored.latencies), self.burn.observe(scored.latencies, now))
        self.controller.observe(
            asked=staged.asked,
            consumed=staged.fetched,
            service=sum(scored.stage_seconds.values()),
            latencies=scored.latencies,
            now=now,
        )

    def _prediction_refused(self, record: Record, exc: KafkaException, scored: ScoredBatch) -> None:
        source = contracts.Source(record.topic, record.partition, record.offset, record.timestamp_ms, record.key)
        envelope = contracts.dead_letter(record.value, source, "produce_failed", exc.args[0].str())
        self._produce(self.topology.events_dlq, envelope, contracts.dead_letter_key(record.key))
        scored.dlq_reasons["produce_failed"] += 1
        scored.refused += 1

    def _observations(self, scored: ScoredBatch):
        """The batch's drift observation; a wide spec's large batch in several records."""
        champion = self.scorer.router.variants.get("champion")
        rows = scored.rows
        for start in range(0, max(len(rows), 1), _OBSERVATION_ROWS):
            first = start == 0  # the counters go with the first record only
            yield contracts.observation(
                worker=self.worker_id,
                valid=len(rows[start : start + _OBSERVATION_ROWS]),
                rows=rows[start : start + _OBSERVATION_ROWS],
                columns=self.spec.model_inputs,
                event_time_max=scored.event_time_max,
                dlq=dict(scored.dlq_reasons) if first else {},
                unseen=dict(scored.unseen) if first else {},
                missing=dict(scored.missing) if first else {},
                champion_version=champion.version if champion else None,
            )

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
            self._produce(
                t.outcomes_dlq,
                contracts.dead_letter(m.value(), source, outcome.reason, outcome.detail, outcome.field),
                contracts.dead_letter_key(m.key()),
            )
        if invalid:
            self.metrics.outcomes("invalid", invalid)
        self._publish(joined)

    def _join(self, pending: list, outcomes: list) -> None:
        """Both sides from the internal topics, which only workers write; a record that is not theirs
        (written by someone else) is counted and logged, never joined."""
        result = JoinResult()
        now = time.time()
        for m in pending:
            try:
                event_id = decode_pending(m.value() or b"").event_id
            except msgspec.DecodeError as exc:
                self._unreadable(m, f"not a pending-join record: {exc}")
                continue
            self.joiner.add_pending(m.partition(), event_id, m.value(), result)
        for m in outcomes:
            outcome = parse_outcome(m.value(), self.spec, now)  # validated before it was re-keyed
            if isinstance(outcome, Outcome):
                self.joiner.add_outcome(m.partition(), outcome, result)
            else:
                self._unreadable(m, f"not an outcome: {outcome.detail}")
        self._publish(result)

    def _unreadable(self, message, why: str) -> None:
        self.metrics.bad_records(message.topic())
        _LOG.warning("skipping %s[%d]@%d: %s", message.topic(), message.partition(), message.offset(), why)

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

    def _on_commit(self, error, partitions) -> None:
        self.checkpoints.committed(error, partitions)

    def _committed(self, topic: str, partition: int, offset: int) -> None:
        if topic == self.topology.events:
            self.journal.prune(partition, offset)

    def _on_delivery(self, error, message) -> None:
        if error is not None:
            self.checkpoints.delivery_errors.append(f"{message.topic()}[{message.partition()}]: {error.str()}")

    # -- checkpoints (streams/state/checkpoint.py) --------------------------------------------------------

    def _quiesce(self, timeout: float) -> None:
        """Step 1: release every staged batch, then have every produced record acknowledged."""
        deadline = time.monotonic() + timeout
        while self._staged:
            if time.monotonic() > deadline:
                raise DriftloopError(f"the output journal was not acknowledged within {timeout:.0f}s")
            self._journal_producer.poll(0.01)
            self._release_acknowledged()
        self.checkpoints.flush(timeout, self._producer)

    def _take_offsets(self) -> dict[tuple[str, int], int]:
        offsets, self._next_offsets = self._next_offsets, {}
        return offsets

    def checkpoint(self, timeout: float = 30.0) -> None:
        """Make everything processed so far durable and commit it, waiting as long as that takes
        (up to `timeout` per step): on a rebalance and at shutdown."""
        self._quiesce(timeout)
        self.checkpoints.complete(self._take_offsets(), timeout)

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
        self.metrics.model_versions(
            {
                (self.spec.model.name, variant): serving.version
                for variant, serving in self.scorer.router.variants.items()
            }
        )
        if self.learner is not None:
            self.metrics.live_metrics(self.learner.live.snapshot())
        now = time.monotonic()
        self.metrics.slo(
            objective=self.controller.objective,
            share_over=self.burn.share_over(now),
            burn_rate=self.burn.burn_rate(now),
            setting=self.controller.setting,
        )
        breakers = self.scorer.breakers
        if breakers is not None:
            breakers.keep({serving.version for serving in self.scorer.router.variants.values()})
            self.metrics.breakers(breakers.states())

    # -- rebalances ---------------------------------------------------------------------------------

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        t = self.topology
        assigned = [(tp.topic, tp.partition) for tp in partitions]
        started = time.monotonic()
        events = [p for topic, p in assigned if topic == t.events]
        states = self.entity_states.restore(self.bootstrap, events)
        journaled = self.journal.restore(self.bootstrap, events)
        waiting = self.join_table.restore(self.bootstrap, [p for topic, p in assigned if topic == t.pending])
        self._assigned.update(assigned)
        _LOG.info(
            "assigned %d partitions; restored %d entity states, %d journal chunks and %d waiting join entries in %.1fs",
            len(assigned),
            states.keys,
            journaled.keys,
            waiting.keys,
            time.monotonic() - started,
        )

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        self.checkpoint()
        self._forget(partitions)

    def _on_lost(self, consumer, partitions: list[TopicPartition]) -> None:
        # Another worker owns them already: committing would be refused; their records are replayed there
        # (and answered from the journal this worker wrote for them).
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._quiesce(30.0)
        for key in lost & self._next_offsets.keys():
            del self._next_offsets[key]
        self.checkpoints.forget(lost)
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        t = self.topology
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        self._assigned.difference_update(revoked)
        events = [p for topic, p in revoked if topic == t.events]
        self.entity_states.drop(events)
        self.journal.drop(events)
        self.scorer.forget(events)
        self.join_table.drop([p for topic, p in revoked if topic == t.pending])


def _record_scored(metrics, scored: ScoredBatch, consumed: int) -> None:
    """Batch-level metric updates: a handful of calls per batch, not per event."""
    metrics.batch(consumed, scored.stage_seconds)
    metrics.recovered(replayed=scored.replayed, skipped=scored.skipped)
    metrics.events_predicted(len(scored.predictions) - scored.refused)
    for reason, count in scored.dlq_reasons.items():
        metrics.dead_lettered(reason, count)
    for (version, variant), count in scored.served.items():
        metrics.predictions(version, variant, count)
    for name, count in scored.unseen.items():
        metrics.unseen_categories(name, count)
    for name, count in scored.missing.items():
        metrics.missing_values(name, count)
    metrics.event_latencies(scored.latencies)
