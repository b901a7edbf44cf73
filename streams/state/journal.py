"""The write-ahead output journal: what the worker decided for each event record, durable before any
of that record's outputs leaves the worker.

Why: after a `kill -9` the records since the last committed offsets are processed again. Their
features come out the same (windows are a function of the restored state and the records, applied
in order), but a score need not: an online model has learned since, or an alias has moved. So before
a batch's predictions, dead letters and join records are produced, the journal records, per input
record, what was decided (the pending-join record, which holds the event id, entity, event time,
score, model version, variant and the scored feature row; or the dead-letter reason), and the batch
waits until the broker has acknowledged it. A record processed again after a crash whose journal
entry exists is answered from the entry, byte for byte the same; one without an entry never had an
output, so it is processed afresh. streams/state/checkpoint.py shows why that covers every case.

Record format (compacted topic `driftloop-<spec>-journal-changelog`, partition = the events partition):
    key    the chunk's first input offset, 20 digits
    value  MessagePack [first_offset, last_offset, entries]; an entry is
           [offset, 0, pending_json]                (a prediction; streams/worker/scoring.py `_Pending`)
           [offset, 1, reason, field, detail]       (a dead letter)
    A chunk is tombstoned once the consumer group's committed offset has passed its last offset, so
    the topic holds about two checkpoints' worth of entries.

    >>> entries = [[offset, DEAD_LETTERED, "invalid_json", None, "not JSON"] for offset in range(5)]
    >>> [[entry[0] for entry in chunk] for chunk in OutputJournal.chunks(entries, limit=70)]
    [[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import KafkaError, Producer

from driftloop.streams.state.changelog import ChangelogTable, Restored
from driftloop.streams.state.store import StateMemory

PREDICTED, DEAD_LETTERED = 0, 1
# A chunk stays well below the producer's 1 MB message limit: a pending record is a few hundred bytes.
CHUNK_BYTES = 512 * 1024
# A chunk is pruned about two checkpoints after it is written: written to RocksDB every few seconds, most
# are written and pruned in between and never reach it (streams/state/changelog.py, "Deferred writes").
WRITE_EVERY_S = 5.0
_encode = msgspec.msgpack.Encoder().encode


class OutputJournal:
    def __init__(self, topic: str, partitions: int, *, directory: Path, memory: StateMemory):
        self.table = ChangelogTable(
            "journal", topic, partitions, directory=directory, memory=memory, write_every=WRITE_EVERY_S
        )
        self._chunks: dict[int, list[tuple[int, str]]] = {}  # partition -> (last offset, key), oldest first
        self._entries: dict[int, dict[int, list[Any]]] = {}  # partition -> offset -> entry, from a restore

    def ensure_changelog(self, bootstrap: str) -> None:
        self.table.ensure_changelog(bootstrap)

    def restore(self, bootstrap: str, partitions: Iterable[int]) -> Restored:
        """Load the entries the previous owner of these partitions wrote and did not prune."""
        wanted = sorted(set(partitions))
        restored = self.table.restore(bootstrap, wanted)
        for partition in wanted:
            chunks = sorted(self.table.items(partition))  # kept until `prune`: a second crash needs them too
            self._chunks[partition] = [(last, key) for key, (_first, last, _entries) in chunks]
            self._entries[partition] = {
                entry[0]: entry for _key, (_first, _last, entries) in chunks for entry in entries
            }
        return restored

    def entry(self, partition: int, offset: int) -> list[Any] | None:
        """What was decided for this record before a restart, or None."""
        entries = self._entries.get(partition)
        return entries.get(offset) if entries else None

    @staticmethod
    def chunks(entries: list[list[Any]], limit: int = CHUNK_BYTES) -> Iterator[list[list[Any]]]:
        """The entries in consecutive chunks of at most about `limit` encoded bytes (at least one each)."""
        chunk: list[list[Any]] = []
        size = 0
        for entry in entries:
            entry_size = len(entry[2]) + 16 if entry[1] == PREDICTED else len(_encode(entry))
            if chunk and size + entry_size > limit:
                yield chunk
                chunk, size = [], 0
            chunk.append(entry)
            size += entry_size
        if chunk:
            yield chunk

    def write(
        self,
        producer: Producer,
        partition: int,
        entries: list[list[Any]],
        on_delivery: Callable[[KafkaError | None, Any], None],
    ) -> int:
        """Produce the entries of one partition's records (offset order); returns the chunks produced."""
        written = 0
        for chunk in self.chunks(entries):
            first, last = chunk[0][0], chunk[-1][0]
            key = f"{first:020d}"
            self.table.append(producer, partition, key, _encode([first, last, chunk]), on_delivery)
            self._chunks.setdefault(partition, []).append((last, key))
            written += 1
        return written

    def prune(self, partition: int, committed: int) -> None:
        """The group committed `committed` on this partition: its earlier chunks are never read again."""
        chunks = self._chunks.get(partition)
        if not chunks or partition not in self.table.assigned:
            return
        while chunks and chunks[0][0] < committed:
            self.table.delete(partition, chunks.pop(0)[1])
        entries = self._entries.get(partition)
        if entries:
            for offset in [o for o in entries if o < committed]:
                del entries[offset]

    def drop(self, partitions: Iterable[int]) -> None:
        partitions = list(partitions)
        self.table.drop(partitions)
        for partition in partitions:
            self._chunks.pop(partition, None)
            self._entries.pop(partition, None)
