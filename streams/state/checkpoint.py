"""The worker's checkpoint: when consumed offsets may be committed, and why a restart then neither
loses a record nor counts one twice.

Every `interval` seconds the worker takes a checkpoint, in five steps. Step 1 costs the loop one round
trip to the broker; the others advance between batches, so scoring goes on while they run:

1. Quiesce: every staged batch is released (its journal chunks acknowledged, its outputs produced;
   streams/worker/loop.py), then every record produced so far is acknowledged (`producer.flush`).
2. Seal: note the next offset of every consumed record and the Feast writer's position, and seal the
   state tables' changed keys (streams/state/changelog.py): the values they hold now are the ones written.
3. Drain: write the sealed keys to their changelogs, `slice` keys per loop iteration (all at once while
   the tables' changed values exceed their memory budget).
4. Deliver: wait until those changelog records are acknowledged (each reports its delivery; a flush
   `max_delivery_wait` after the drain ended if reports do not come).
5. Commit the noted offsets once the Feast rows submitted before the seal are written (asynchronously:
   a lost commit is covered by the next). When the broker confirms a commit, the journal forgets the
   chunks below it.

Why a restart is exact. A successor restores the tables and the journal and consumes from the last
committed offsets C. (A restored partition is its local store, which holds the changelog's records up to
an offset and nothing else, plus the changelog's records after that offset: the same state as a replay
of the whole changelog; streams/state/changelog.py.) Take an event record r at offset y >= C, and the
restored state of its entity, written at some seal S (or nothing):
- If the state holds r (its offset `o` >= y), r was processed before S, so by step 1 every output of
  r was acknowledged before S and its journal entry too: r is skipped (streams/worker/scoring.py).
- Otherwise the state is as it was before r, and the events of that entity between S and r are all
  at offsets >= C (S's changes were delivered before any commit after S), so they are applied again
  in order and r's windows come out exactly as the first time. If r had outputs, they left only after
  its journal entry was acknowledged, and the journal keeps entries until a commit confirmed past them
  (>= C's predecessors, so r's is there): r is answered from its entry, the same score, version and
  features. No entry: r never had an output, and is processed afresh.
The join table follows the same seals, and a join's `labeled` record was acknowledged before the seal
that deleted the entry (step 1), so no joined outcome is lost; one re-joined after a restart may give
a second `labeled` record with the same content.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

from confluent_kafka import Consumer, Producer, TopicPartition

from driftloop.errors import DriftloopError

_LOG = logging.getLogger("driftloop.streams.state.checkpoint")


@dataclass
class _Sealed:
    offsets: dict[tuple[str, int], int]  # next offset per input partition at the seal
    feast_mark: int  # the Feast writer's position then
    drained_at: float | None = None  # monotonic time its changed keys were all produced
    delivered: bool = False  # every record produced before drained_at is acknowledged


class Checkpoints:
    """Steps 2-5 above for a loop that has done step 1 (`quiesced`) before calling `seal`."""

    def __init__(
        self,
        producer: Producer,
        consumer: Consumer,
        tables: list,
        feast,
        metrics,
        *,
        on_committed,
        slice_keys: int = 500,
        max_delivery_wait: float = 5.0,
    ):
        # The changelogs' own producer: each of their records reports its delivery (step 4), which the
        # outputs' producer does not do (a report per output record would cost the hot path).
        self.producer = producer
        self.consumer = consumer
        self.tables = tables  # ChangelogTables, drained in this order
        self.feast = feast
        self.metrics = metrics
        self.on_committed = on_committed  # (topic, partition, offset) once the broker confirms a commit
        self.slice_keys = slice_keys
        self.max_delivery_wait = max_delivery_wait
        self.delivery_errors: list[str] = []  # outputs the producer reported lost; filled by the pipeline
        self._uncommitted: deque[_Sealed] = deque()  # oldest first
        self._draining: _Sealed | None = None

    @property
    def draining(self) -> bool:
        """A checkpoint's changed keys are still being written or acknowledged: the next seal waits, so the
        tables see every record acknowledged between two seals (their moment to move values to disk)."""
        return self._draining is not None or any(not c.delivered for c in self._uncommitted)

    def seal(self, offsets: dict[tuple[str, int], int]) -> bool:
        """Step 2 for the offsets consumed so far; False (nothing done) while the last one still drains."""
        if self._draining is not None or not offsets:
            return False
        for table in self.tables:
            table.seal()
        self._draining = _Sealed(dict(offsets), self.feast.mark())
        self._uncommitted.append(self._draining)
        return True

    def advance(self, now: float) -> None:
        """Steps 3-5, as far as they can go without waiting."""
        started = time.perf_counter()
        draining = self._draining
        # Over the memory budget, a slice per iteration would fall behind the keys each batch changes:
        # the whole checkpoint goes out at once, so its values can leave memory (changelog.py) sooner.
        limit = None if self.tables[0].memory.over_budget() else self.slice_keys
        if draining is not None and all(table.drain(self.producer, limit) for table in self.tables):
            draining.drained_at, self._draining = now, None
        drained = [c for c in self._uncommitted if c.drained_at is not None and not c.delivered]
        if drained:
            if not any(table.in_flight for table in self.tables):
                for c in drained:
                    c.delivered = True
            elif now - cast(float, drained[0].drained_at) >= self.max_delivery_wait:  # set: filtered above
                self.flush(30.0)
                for c in drained:
                    c.delivered = True
        self._check_delivered()
        self._commit(asynchronous=True)
        if self._uncommitted:
            self.metrics.stage("checkpoint", time.perf_counter() - started)

    def complete(self, offsets: dict[tuple[str, int], int], timeout: float = 30.0) -> None:
        """Steps 2-5 at once, waiting as long as they take: on a rebalance and at shutdown."""
        started = time.perf_counter()
        self._draining = None  # the one draining (if any) completes with this one
        if offsets:
            self._uncommitted.append(_Sealed(dict(offsets), self.feast.mark()))
        for table in self.tables:
            table.flush_to(self.producer)
        self.flush(timeout)
        for c in self._uncommitted:
            c.drained_at, c.delivered = c.drained_at or time.monotonic(), True
        self._check_delivered()
        self.feast.flush(timeout)
        self._commit(asynchronous=False)
        self.metrics.stage("checkpoint", time.perf_counter() - started)

    def forget(self, lost: set[tuple[str, int]]) -> None:
        """Partitions another worker owns already: their offsets are not ours to commit."""
        for sealed in self._uncommitted:
            for key in lost & sealed.offsets.keys():
                del sealed.offsets[key]

    def flush(self, timeout: float, producer: Producer | None = None) -> None:
        if (producer or self.producer).flush(timeout) > 0:
            raise DriftloopError(
                f"the broker did not acknowledge every record within {timeout:.0f}s; "
                f"offsets were not committed (the records will be processed again)"
            )

    def committed(self, error, partitions: list[TopicPartition]) -> None:
        """The consumer's commit callback."""
        if error is not None:  # the next checkpoint commits these offsets again, or later ones
            _LOG.warning("committing offsets failed: %s", error)
            return
        for tp in partitions:
            if tp.error is None and tp.offset >= 0:
                self.on_committed(tp.topic, tp.partition, tp.offset)

    def _check_delivered(self) -> None:
        for table in self.tables:
            table.check_delivered()  # changelog records report through their own callback
        if self.delivery_errors:
            raise DriftloopError(
                f"{len(self.delivery_errors)} records were not delivered "
                f"(first: {self.delivery_errors[0]}); offsets were not committed"
            )

    def _commit(self, *, asynchronous: bool) -> None:
        """Step 5: commit the delivered checkpoints, oldest first, whose Feast rows are written."""
        ready: dict[tuple[str, int], int] = {}
        while (
            self._uncommitted
            and self._uncommitted[0].delivered
            and self.feast.written_through(self._uncommitted[0].feast_mark)
        ):
            ready.update(self._uncommitted.popleft().offsets)
        if not ready:
            return
        offsets = [TopicPartition(topic, p, offset) for (topic, p), offset in ready.items()]
        if asynchronous:
            self.consumer.commit(offsets=offsets, asynchronous=True)  # confirmed through `committed`
        else:
            self.committed(None, self.consumer.commit(offsets=offsets, asynchronous=False))
