"""Partitioned key/value state that survives a worker's death: a local RocksDB store per partition, backed by
a compacted Kafka changelog topic that is the source of recovery.

The scoring worker consumes with confluent-kafka in batches (Faust's per-event path is too slow), but
it needs what Faust tables give: per-entity state and a join table that outlive a killed worker and
follow partition reassignment. A `ChangelogTable` is that store, one per logical table:

    memory = StateMemory(128)                    # one budget for every table of the process
    table = ChangelogTable("entity-state", "driftloop-card_fraud-entity-state-changelog", partitions=4,
                           directory=data_dir / "state", memory=memory)
    table.ensure_changelog(bootstrap)            # once at start-up
    table.restore(bootstrap, [0, 2])             # on assignment of source partitions 0 and 2
    state = table.get(0, "u-42"); table.set(0, "u-42", new_state)
    table.flush_to(producer); producer.flush(); table.check_delivered(); consumer.commit(...)  # per batch
    # or, without stalling a loop: seal() at a checkpoint, drain(producer, 500) per iteration until True
    # on revocation of partition 2: the same flush, delivery check and commit, then
    table.drop([2])

Partitions
    State partition p holds the keys whose source events came from source partition p; the caller
    passes the partition with every call and the store never hashes keys. So the changelog has as
    many partitions as the source topic (`ensure_changelog` enforces it), and whoever owns source
    partition p owns state partition p and its changelog partition p (what Faust does too).
    A partition is usable only between `restore` (which loads it) and `drop` (which forgets it);
    get/set/delete/items/expire on any other partition raise ValueError, so a worker cannot write
    into a partition it no longer owns.

Where values live
    A partition's values are in its `PartitionStore` (streams/state/store.py), a RocksDB database under
    `<directory>/<topic>/<partition>/` that holds exactly the changelog's records up to an offset, and in
    an overlay in memory: the values set or deleted since they last reached the store, and values read
    from it since (dropped at every quiet moment; a table made with `keep_written` also keeps the
    values it wrote, and drops them only once the tables' memory passes 3/4 of its share, so the
    window states of entities that keep sending are not read back and decoded after every
    checkpoint). `get` looks in the overlay, then in the store. A value reaches the store only once
    its changelog record is acknowledged AND every record this table produced before it is too, with
    nothing sealed left to drain (a quiet moment, which every checkpoint of
    streams/state/checkpoint.py reaches); then the acknowledged records go into the store in offset
    order, in atomic batches of up to `STORE_WRITE_CHUNK` records, each with the offset after its last
    (queued on the budget's `StoreWriter`, whose batches the loop runs when it would otherwise wait), and
    leave the overlay once written unless changed since.
    So the store never holds a value the changelog does not, and memory holds only what changed since
    the last checkpoint (bounded by `StateMemory`: past its share a checkpoint is due) plus RocksDB's
    capped caches, whatever the number of keys.

Record format (changelog topic, one record per changed key and flush)
    partition  the state partition
    key        the key, UTF-8 bytes
    value      the value in MessagePack (msgspec's encoding), or no value (a Kafka tombstone) when the
               key was deleted
    No headers. Any Kafka client reads it with a MessagePack library (Python: `msgpack.unpackb`).
    MessagePack, not JSON: a window state is a few kilobytes of floats, which msgspec encodes 7x
    faster in MessagePack (3 vs 20 us) and decodes 1.5x faster. Changelogs that earlier versions
    wrote as JSON are still restored (a value starting with `{`).
    Values are JSON-like values other than null (`set` refuses None: `get` returns None for
    "absent"): dicts with str keys, lists, str, bytes, int, float, bool. A restore also treats a null
    value as a deletion.

Changelog topic
    Created with `cleanup.policy=compact` (Tansu accepts the config), so Kafka eventually keeps only
    the latest record per key and drops tombstones. Tansu never compacts: its changelogs only grow,
    which is why a restart reads only what its local store has not applied. An existing topic must
    have the source's partition count and a compacting policy; otherwise `ensure_changelog` raises
    DriftloopError (time- or size-based deletion would silently lose the state of quiet keys).

Restore
    Opens (or creates) each given partition's store and applies the changelog from the store's offset
    to the end: a restarted worker on the same data directory reads only the records written since its
    store last reached disk (streams/state/store.py: at a clean stop, everything; after `kill -9`, the
    last flush of RocksDB's memtables); a worker on another host (an empty store) reads from offset 0.
    The end is where the consumer reports end-of-partition (`enable.partition.eof`, i.e. the high
    watermark of the fetch response; Tansu's ListOffsets can be wrong, so it is not asked); records a
    concurrent writer appends later are not read. A store whose offset lies beyond the changelog's end
    (the topic was deleted and made anew) is wiped and restored from the beginning; a topic made anew
    that has since grown past the store's offset cannot be told apart, so delete
    `<directory>/<topic>/` with the topic. Records apply in offset order, last one per key wins, a
    tombstone deletes. The partitions' overlays are cleared: unflushed writes are gone.
    Measured on embedded Tansu, 2 cores: see docs/benchmarks.md ("State").
    A new owner's restore sees every write of the previous owner if that owner flushed, had the records
    delivered and committed before giving the partition up (its revocation callback does that).

Writes and flushing (at-least-once)
    `set` and `delete` change the overlay and mark the key dirty; nothing reaches Kafka until `flush_to`.
    `flush_to(producer)` produces one record per dirty key with its value at flush time (ten writes to
    a key between flushes are one record), then forgets the dirty marks. The caller then flushes the
    producer (its `poll` or `flush` runs the delivery reports, which move values into the store), calls
    `check_delivered()` (which raises if a changelog record was not delivered), and only then commits
    its source offsets. Changelog records carry their own delivery callback, which replaces the
    producer's configured `on_delivery` for them: that one never sees their failures.
    A crash after the changelog records were delivered but before the commit leaves the changelog
    AHEAD of the committed source offsets: after a restart the restored state already contains the
    effect of the source records that will be replayed, and the caller must make those replays
    harmless (e.g. by recognising an event id or event time the state already holds). The changelog
    is never behind the commit unless `check_delivered` is skipped.
    Records of one key are at most one per flush; if the producer can reorder records (retries with
    several requests in flight and no idempotence), flushing it between two `flush_to` calls keeps each
    key's records in order, which the flush-then-commit protocol above already does.
    Values are held by reference: mutating a value in place changes memory but is not flushed unless
    the key is `set` again (as with Faust tables).
    Incremental: `seal()` moves the dirty marks into a draining set, and each `drain(producer, limit)`
    produces up to `limit` of those keys and returns True once none is left; keys written after the
    seal are marked for the next seal. A drain writes each key's value AS OF THE SEAL: a sealed key
    that changes before it is drained has its sealed value encoded first (`set`, `delete`, and
    `get_for_update`, which a caller that mutates values in place must use). So the changelog never
    holds a state newer than the last seal, and a caller that sealed at a moment when every output of
    the records before it was delivered knows that a restored state never reflects a record whose
    outputs were lost. It also spreads the encoding of a checkpoint's changed keys (tens of
    milliseconds for a few thousand window states) over its loop's iterations.
    `flush_to` is `seal` and a `drain` without limit.
    Write-ahead: `append(producer, partition, key, value, on_delivery)` produces one record now,
    outside the dirty/seal cycle and without keeping the value in memory (it reaches the store with
    the other acknowledged records); the caller learns of its delivery through `on_delivery`.
    `in_flight` counts the sealed records whose delivery has not been reported (not the appended ones).

Deferred writes
    A table made with `write_every=S` hands its acknowledged records to the writer at most every
    S seconds (at the first quiet moment after), or sooner once their encoded values exceed
    1/DEFERRED_SHARE of the overlays' budget; `drop`, `close` and `restore` write what is waiting. Each
    write applies only a key's last record and never deletes a key the store did not hold, so a record
    written and deleted between two writes costs RocksDB nothing: the output journal's chunks, pruned
    two checkpoints after they are written, mostly never reach it. The store still holds exactly a
    prefix of the changelog, only a shorter one: a restart reads up to S seconds more of it. Values
    set through the overlay stay in memory until their write, so it suits tables whose records are
    appended or whose keys stay hot.

Counting and expiry
    `counts(partition)` is the live keys by `kind_of(value)` ("" without one), kept in the store for
    what it holds and corrected by the overlay: no scan. A table made with `expiry_time(value)` keeps
    an index by that time in the store, so `expire(partition, older_than)` reads the entries due, not
    every entry.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, NewTopic

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.streams.state.store import PartitionStore, StateMemory

_LOG = logging.getLogger(__name__)
_encode = msgspec.msgpack.Encoder().encode
_decode_msgpack = msgspec.msgpack.Decoder().decode
_decode_json = msgspec.json.Decoder().decode


def _decode(raw: bytes) -> Any:
    # A MessagePack map starts with 0x80-0x8f, 0xde or 0xdf; a JSON changelog's object value with "{".
    return _decode_json(raw) if raw[:1] == b"{" else _decode_msgpack(raw)


# assign()-ed, so nothing is ever committed; fetch.wait.max.ms: a broker holds a fetch of an empty
# partition for that long before answering, so the default 500 ms would delay every such restore.
_RESTORE_CONSUMER = {
    "enable.partition.eof": True,
    "enable.auto.commit": False,
    "fetch.wait.max.ms": 10,
    **kafka.BOUNDED_CONSUMER,
}
# consume() returns after this many records or its timeout, whichever comes first: a short timeout
# so that the last, partial batch and the end-of-partition events are not held back.
_RESTORE_BATCH = 10_000
_RESTORE_POLL_S = 0.01
# Records per RocksDB write batch, the loop's unit of store work (store.StoreWriter): ~1-2 ms of it.
STORE_WRITE_CHUNK = 1000
DEFERRED_SHARE = 4  # a table deferring its writes holds at most 1/4 of the overlays' budget in them
_DELETED = object()  # an overlay entry for a key deleted since the store last had it
_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Restored:
    """What one `restore` read: changelog records applied, live keys loaded, seconds taken."""

    records: int
    keys: int
    seconds: float


# What a changelog record's value is (its `kind_of` and `expiry_time`), when known as it was produced;
# None: decoded from the record when it is written into the store.
_Meta = tuple[str, float | None] | None
_Record = tuple[int, bytes, bytes | None, _Meta]  # (offset, key, value, meta) of an acknowledged record
_UNDESCRIBED = ("", None)


@dataclass
class _StoreWrite:
    """Acknowledged records on their way into the stores, queued on the memory budget's writer."""

    done: Future
    forget: dict[int, list[str]]  # per partition: keys whose value in memory is the one written ...
    touched: dict[int, set[str]]  # ... unless changed since the write was submitted


class ChangelogDeliveryError(RuntimeError):
    """Changelog records were not delivered: the state they carry would be lost on a restart."""


class ChangelogTable:
    """Key (str) -> value state in `partitions` partitions, on local disk, persisted to a compacted changelog."""

    # A decoded window state takes about five times its MessagePack bytes in Python objects (measured on
    # the demo spec: 5.4 kB for 1.1 kB); values made mostly of bytes or strings take far less.
    PYTHON_BYTES_PER_ENCODED_BYTE = 5.0

    def __init__(
        self,
        name: str,
        topic: str,
        partitions: int,
        *,
        directory: Path,
        memory: StateMemory,
        kind_of: Callable[[Any], str] | None = None,
        expiry_time: Callable[[Any], float] | None = None,
        python_bytes_per_encoded_byte: float = PYTHON_BYTES_PER_ENCODED_BYTE,
        write_every: float = 0.0,
        keep_written: bool = False,
    ):
        """`write_every`: seconds between store writes (0: at every quiet moment); see "Deferred writes".
        `keep_written`: values stay in memory once written, for their next read (see "Where values live")."""
        if partitions < 1:
            raise ValueError(f"table {name!r}: partitions must be >= 1, got {partitions}")
        self.name = name
        self.topic = topic
        self.partitions = partitions
        self.directory = Path(directory) / topic
        self.memory = memory
        memory.tables.append(self)
        self._kind_of = kind_of
        self._expiry_time = expiry_time
        self._described = kind_of is not None or expiry_time is not None  # records carry a kind or an expiry
        self._stores: dict[int, PartitionStore] = {}  # only assigned partitions have an entry
        self._overlay: dict[int, dict[str, Any]] = {}  # values changed since the store had them (_DELETED)
        self._read: dict[int, dict[str, Any]] = {}  # values as the store holds them, kept for the next read
        self._dirty: dict[int, set[str]] = {}
        self._draining: dict[int, set[str]] = {}  # sealed dirty keys not yet produced
        self._sealed: dict[int, dict[str, bytes | None]] = {}  # sealed values of draining keys changed since
        self._acknowledged: dict[int, list[_Record]] = {}
        # The memory budget's writer writes the stores, in submission order, a batch at a time when the loop
        # has time, so it does not wait for a whole write (a checkpoint's thousands of records take 10-50 ms).
        self._writes: deque[_StoreWrite] = deque()  # oldest first
        self._failed_deliveries: list[KafkaError] = []
        self.in_flight = 0  # flushed records whose delivery has not been reported yet
        self._unacknowledged = 0  # every produced record (appended ones too) not reported yet
        self._encoded_bytes, self._encoded_values = 0, 0  # for the overlay's memory estimate
        self._python_bytes_per_encoded_byte = python_bytes_per_encoded_byte
        self._write_every = write_every
        self._keep_written = keep_written
        self._next_write = time.monotonic() + write_every
        self._unwritten_bytes = 0  # acknowledged records' encoded values not yet handed to the writer

    # -- topic -------------------------------------------------------------------------------------

    def ensure_changelog(self, bootstrap: str, timeout: float = 15.0) -> bool:
        """Create the compacted changelog topic if missing (True if this call created it).

        Raises DriftloopError if it exists with another partition count or without compaction.
        """
        client = kafka.admin(bootstrap)
        created = False
        if self.topic not in client.list_topics(timeout=timeout).topics:
            new = NewTopic(
                self.topic, num_partitions=self.partitions, replication_factor=1, config={"cleanup.policy": "compact"}
            )
            future = client.create_topics([new], operation_timeout=timeout, request_timeout=timeout)[self.topic]
            try:
                future.result(timeout)
                created = True
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another worker won the race: fine
                    raise DriftloopError(f"cannot create changelog topic {self.topic!r}: {exc.args[0].str()}") from None
        found = self._wait_for_partition_count(client, timeout)
        if found != self.partitions:
            raise DriftloopError(
                f"changelog topic {self.topic!r} of table {self.name!r} has {found} partitions but the source "
                f"has {self.partitions}: state partition p must match source partition p, so delete the "
                f"changelog topic (its state is rebuilt from the source) or give it {self.partitions} partitions"
            )
        policy = self._cleanup_policy(client, timeout)
        if "compact" not in policy.split(","):
            raise DriftloopError(
                f"changelog topic {self.topic!r} of table {self.name!r} has cleanup.policy={policy}: deletion by "
                f"age or size would lose the state of quiet keys; set cleanup.policy=compact on it"
            )
        return created

    def _wait_for_partition_count(self, client: Any, timeout: float) -> int:
        """The topic's partition count, once metadata shows it (a just-created topic can lag)."""
        deadline = time.monotonic() + timeout
        while True:
            metadata = client.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                return len(metadata.partitions)
            if time.monotonic() > deadline:
                raise DriftloopError(f"changelog topic {self.topic!r} did not appear in metadata within {timeout:.0f}s")
            time.sleep(0.1)

    def _cleanup_policy(self, client: Any, timeout: float) -> str:
        resource = ConfigResource(ConfigResource.Type.TOPIC, self.topic)
        future = client.describe_configs([resource], request_timeout=timeout)[resource]
        entry = future.result(timeout).get("cleanup.policy")
        return entry.value if entry is not None and entry.value else "delete"  # Kafka's default

    # -- assignment --------------------------------------------------------------------------------

    @property
    def assigned(self) -> frozenset[int]:
        """The partitions this store holds (restored and not dropped)."""
        return frozenset(self._stores)

    def restore(self, bootstrap: str, partitions: Iterable[int], timeout: float = 60.0) -> Restored:
        """Open the partitions' local stores and apply the changelog from each store's offset to the end;
        their overlays (unflushed writes included) are cleared.

        Raises DriftloopError if the changelog cannot be read to its end within `timeout` seconds.
        """
        wanted = sorted(set(partitions))
        for partition in wanted:
            self._check_range(partition)
        self._persist_if_quiet(force=True)
        self.wait_written()
        started = time.perf_counter()
        for partition in wanted:
            if partition not in self._stores:
                self._stores[partition] = PartitionStore(self.directory / str(partition), self.memory)
            for per_partition in (self._overlay, self._read, self._sealed):
                per_partition[partition] = {}
            self._dirty[partition], self._draining[partition] = set(), set()
            self._acknowledged[partition] = []
        records = 0
        if wanted:
            # Decoded values are new GC-tracked containers, so the cyclic collector would rescan them
            # again and again; nothing here creates cycles.
            collecting = gc.isenabled()
            gc.disable()
            try:
                records = self._read_to_end(bootstrap, wanted, timeout)
            finally:
                if collecting:
                    gc.enable()
        keys = sum(sum(self._stores[p].counts.values()) for p in wanted)
        return Restored(records, keys, time.perf_counter() - started)

    def _read_to_end(self, bootstrap: str, wanted: list[int], timeout: float) -> int:
        # assign() never joins the group, so the group id only satisfies librdkafka.
        consumer = kafka.consumer(bootstrap, f"driftloop-restore-{self.topic}", **_RESTORE_CONSUMER)
        reading = set(wanted)  # until its end is reached
        # A store that has applied records [0, offset) needs the rest; but a fetch from beyond a
        # partition's end gets no answer on Tansu, so such a partition is read from 0 until the first
        # fetch response tells its end (the consumer's cached high watermark), then sought to `offset`.
        probing = {p for p in wanted if self._stores[p].offset > 0}
        skip_below = {p: self._stores[p].offset for p in wanted}
        records = 0
        last_error = ""
        deadline = time.monotonic() + timeout
        try:
            # A missing topic produces no consumer error, only a timeout: say so at once instead.
            topic = consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
            if topic is None or topic.error is not None:
                raise DriftloopError(
                    f"restoring table {self.name!r}: changelog topic {self.topic!r} does not exist "
                    f"(ensure_changelog creates it)"
                )
            # Offset 0, not OFFSET_BEGINNING: on Tansu the latter costs an extra 0.5 s per restore, and if
            # a broker's log no longer starts at 0, auto.offset.reset=earliest (CONSUMER_DEFAULTS) applies.
            consumer.assign([TopicPartition(self.topic, p, 0 if p in probing else skip_below[p]) for p in wanted])
            while reading:
                if time.monotonic() > deadline:
                    raise DriftloopError(
                        f"restoring table {self.name!r}: changelog {self.topic!r} partitions {sorted(reading)} "
                        f"not read to their end within {timeout:.0f}s ({records} records read{last_error})"
                    )
                batch: dict[int, list[_Record]] = {}
                for message in consumer.consume(_RESTORE_BATCH, timeout=_RESTORE_POLL_S):
                    partition, error = message.partition(), message.error()
                    if error is not None and error.code() != KafkaError._PARTITION_EOF:
                        if error.fatal():
                            raise DriftloopError(f"restoring table {self.name!r} from {self.topic!r}: {error.str()}")
                        # librdkafka retries these itself; the deadline bounds a restore that cannot progress
                        _LOG.warning("restoring table %r from %r: %s", self.name, self.topic, error.str())
                        last_error = f"; last consumer error: {error.str()}"
                        continue
                    # Consumed records and end-of-partition events always carry an offset; changelog records a key.
                    offset, key = cast(int, message.offset()), cast(bytes, message.key())
                    if partition not in reading:  # written after its end was reached: not part of this restore
                        continue
                    if partition in probing:
                        probing.discard(partition)
                        end = (
                            offset
                            if error is not None
                            else consumer.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)[1]
                        )
                        if end < skip_below[partition]:
                            _LOG.warning(
                                "table %r: the local store of partition %d has applied %d records but the "
                                "changelog %r ends at %d: it followed another changelog, restoring from "
                                "the beginning",
                                self.name,
                                partition,
                                skip_below[partition],
                                self.topic,
                                end,
                            )
                            self._stores[partition].wipe()
                            skip_below[partition] = 0
                        elif error is None:
                            consumer.seek(TopicPartition(self.topic, partition, skip_below[partition]))
                            continue
                    if error is not None:  # end of partition
                        if offset >= skip_below[partition]:
                            reading.discard(partition)
                        continue
                    if offset < skip_below[partition]:  # applied, or fetched again after the seek
                        continue
                    skip_below[partition] = offset + 1
                    batch.setdefault(partition, []).append((offset, key, message.value(), None))
                for partition, applied in batch.items():
                    for _written in self._apply(partition, applied):
                        pass
                    records += len(applied)
        finally:
            consumer.close()
        return records

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget those partitions' unflushed writes and close their stores (on revocation; flush first to
        keep the writes)."""
        self._persist_if_quiet(force=True)
        self.wait_written()
        for partition in partitions:
            store = self._stores.pop(partition, None)
            if store is not None:
                store.close()
            for per_partition in (
                self._overlay,
                self._read,
                self._dirty,
                self._draining,
                self._sealed,
                self._acknowledged,
            ):
                per_partition.pop(partition, None)

    def close(self) -> None:
        """Close every store (a worker's shutdown, after its last checkpoint)."""
        self.drop(list(self._stores))
        if self in self.memory.tables:
            self.memory.tables.remove(self)

    # -- reads and writes --------------------------------------------------------------------------

    def get(self, partition: int, key: str) -> Any:
        """The key's value, or None if absent."""
        try:
            value = self._overlay[partition].get(key, _ABSENT)
        except KeyError:
            raise self._not_assigned(partition) from None
        if value is _ABSENT:
            read = self._read[partition]
            value = read.get(key, _ABSENT)
            if value is _ABSENT:
                raw = self._stores[partition].get(key.encode())
                if raw is None:
                    return None
                value = read[key] = _decode(raw)
            return value
        return None if value is _DELETED else value

    def get_many(self, partition: int, keys: list[str]) -> list[Any]:
        """Each key's value (None if absent), as `get` gives it, with one read of the store for the keys
        not in memory (a multi-get, which releases the GIL, instead of a lookup per key)."""
        try:
            overlay, read = self._overlay[partition], self._read[partition]
        except KeyError:
            raise self._not_assigned(partition) from None
        found = [overlay.get(key, _ABSENT) for key in keys]
        for index, value in enumerate(found):
            if value is _ABSENT:
                found[index] = read.get(keys[index], _ABSENT)
        unread = [index for index, value in enumerate(found) if value is _ABSENT]
        if unread:
            stored = self._stores[partition].get_many([keys[index].encode() for index in unread])
            for index, raw in zip(unread, stored):
                found[index] = None if raw is None else read.setdefault(keys[index], _decode(raw))
        return [None if value is _DELETED else value for value in found]

    def get_for_update(self, partition: int, key: str) -> Any:
        """The key's value (None if absent), to be mutated in place and `set` again: a sealed key's
        value as of the seal is kept for the drain first."""
        value = self.get(partition, key)
        if key in self._draining[partition]:
            self._keep_sealed(partition, key, value)
        return value

    def set(self, partition: int, key: str, value: Any) -> None:
        if value is None:
            raise ValueError(f"table {self.name!r}: None is not a storable value; use delete({partition}, {key!r})")
        self._change(partition, key, value)

    def delete(self, partition: int, key: str) -> None:
        """Remove the key; the next flush writes a tombstone (also for a key that was never there)."""
        self._change(partition, key, _DELETED)

    def _change(self, partition: int, key: str, value: Any) -> None:
        try:
            overlay = self._overlay[partition]
        except KeyError:
            raise self._not_assigned(partition) from None
        if key in self._draining[partition]:  # sealed keys are in the overlay: they were written
            current = overlay.get(key)
            self._keep_sealed(partition, key, None if current is _DELETED else current)
        self._read[partition].pop(key, None)
        overlay[key] = value
        self._dirty[partition].add(key)
        for write in self._writes:
            touched = write.touched.get(partition)
            if touched is not None:
                touched.add(key)

    def _keep_sealed(self, partition: int, key: str, value: Any) -> None:
        sealed = self._sealed[partition]
        if key not in sealed:  # the first change since the seal: what it replaces is the sealed value
            sealed[key] = None if value is None else _encode(value)

    def items(self, partition: int) -> list[tuple[str, Any]]:
        """A snapshot of the partition's (key, value) pairs; safe to modify the table while iterating it.
        Reads the whole store: for small tables and tests, not for a sweep over millions of keys."""
        self.wait_written()
        try:
            overlay = self._overlay[partition]
        except KeyError:
            raise self._not_assigned(partition) from None
        found = {key.decode(): _decode(raw) for key, raw in self._stores[partition].items()}
        for key, value in overlay.items():
            if value is _DELETED:
                found.pop(key, None)
            else:
                found[key] = value
        return list(found.items())

    def counts(self, partition: int) -> Counter:
        """Live keys of the partition by `kind_of` (one kind, "", without it): the store's counts corrected
        by the overlay's changes, without reading the keys that did not change."""
        self.wait_written()  # the store's counts and values must be of one moment
        try:
            overlay = self._overlay[partition]
        except KeyError:
            raise self._not_assigned(partition) from None
        counts = Counter(self._stores[partition].counts)
        keys = list(overlay)
        for key, raw in zip(keys, self._stores[partition].get_many([key.encode() for key in keys])):
            if raw is not None:
                counts[self._stored_kind(raw)] -= 1
            value = overlay[key]
            if value is not _DELETED:
                counts[self._kind(value)] += 1
        return +counts  # drops kinds counted down to zero

    def __len__(self) -> int:
        """Live keys across the assigned partitions."""
        return sum(sum(self.counts(p).values()) for p in self._stores)

    def _kind(self, value: Any) -> str:
        return "" if self._kind_of is None else self._kind_of(value)

    def _stored_kind(self, raw: bytes) -> str:
        return "" if self._kind_of is None else self._kind_of(_decode(raw))

    def expire(self, partition: int, older_than: float) -> list[tuple[str, Any]]:
        """Delete (with tombstones) the partition's entries whose `expiry_time(value)` < older_than; return them.

        Reads the changed values in memory and the store's expiry index up to `older_than`, so a sweep
        costs what is due, not what is stored.
        """
        if self._expiry_time is None:
            raise ValueError(f"table {self.name!r} was made without an expiry_time")
        try:
            overlay = self._overlay[partition]
        except KeyError:
            raise self._not_assigned(partition) from None
        time_of, store = self._expiry_time, self._stores[partition]
        expired = [
            (key, value) for key, value in overlay.items() if value is not _DELETED and time_of(value) < older_than
        ]
        stored: dict[bytes, Any] = {}  # each listed key's value in the store, read once
        stale = []
        for index_key, covers, raw_keys in list(store.due(older_than)):
            unread = [raw_key for raw_key in raw_keys if raw_key not in stored]
            for raw_key, raw in zip(unread, store.get_many(unread)):
                stored[raw_key] = None if raw is None else _decode(raw)
            indexes_one = False  # the entry goes once no key it lists is in the store at a time it covers
            for raw_key in raw_keys:
                key = raw_key.decode()
                if key in overlay:  # changed since it was stored: judged by its value in memory above
                    indexes_one = True
                    continue
                value = stored[raw_key]
                if value is None or not covers(time_of(value)):  # deleted, or indexed elsewhere
                    continue
                indexes_one = True
                if time_of(value) < older_than:
                    expired.append((key, value))
                    stored[raw_key] = None  # another entry listing it expires it no second time
            if not indexes_one:
                stale.append(index_key)
        for key, _ in expired:
            self.delete(partition, key)
        store.forget_expiry(stale)
        return expired

    def overlay_estimate(self) -> int:
        """Bytes the values held in memory take, estimated from the mean encoded value."""
        held = sum(map(len, self._overlay.values())) + sum(map(len, self._read.values()))
        if not held:
            return self._unwritten_bytes
        mean = self._encoded_bytes / self._encoded_values if self._encoded_values else 1024
        return int(held * mean * self._python_bytes_per_encoded_byte) + self._unwritten_bytes

    def _check_range(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"table {self.name!r} has partitions 0..{self.partitions - 1}, not {partition}")

    def _not_assigned(self, partition: int) -> ValueError:
        return ValueError(
            f"table {self.name!r}: partition {partition} is not assigned to this store "
            f"(assigned: {sorted(self._stores)}); restore it first"
        )

    # -- flushing ----------------------------------------------------------------------------------

    def flush_to(self, producer: Producer) -> int:
        """Produce one changelog record per key written since the last flush; return how many.

        The records are only queued: flush the producer, then `check_delivered()`, then commit.
        """
        self.seal()
        return self._produce_draining(producer, None)

    def seal(self) -> None:
        """Move the keys written so far into the draining set, for `drain`."""
        for partition, dirty in self._dirty.items():
            if dirty:
                sealed = self._sealed[partition]
                for key in dirty & sealed.keys():  # still draining from an earlier seal: this one is newer
                    del sealed[key]
                self._draining[partition] |= dirty
                dirty.clear()

    def drain(self, producer: Producer, limit: int | None) -> bool:
        """Produce up to `limit` (None: all) sealed keys' records; True once every sealed key is produced."""
        self._produce_draining(producer, limit)
        return not any(self._draining.values())

    def _produce_draining(self, producer: Producer, limit: int | None) -> int:
        produced = 0
        for partition, draining in self._draining.items():
            overlay, sealed = self._overlay[partition], self._sealed[partition]
            while draining and (limit is None or produced < limit):
                key = draining.pop()
                meta: _Meta = None
                if key in sealed:
                    encoded = sealed.pop(key)
                else:
                    value = overlay.get(key, _DELETED)
                    encoded = None if value is _DELETED else _encode(value)
                    if encoded is not None and self._described:
                        meta = self._meta(value)
                if encoded is not None:
                    self._encoded_bytes += len(encoded)
                    self._encoded_values += 1
                self._produce(producer, partition, key.encode(), encoded, meta=meta)
                produced += 1
        self._persist_if_quiet()  # a seal with nothing to drain
        return produced

    def append(
        self,
        producer: Producer,
        partition: int,
        key: str,
        value: bytes | None,
        on_delivery: Callable[[KafkaError | None, Any], None],
    ) -> None:
        """Produce one already-encoded record now (write-ahead; None: a tombstone), without keeping it in
        memory: it reaches the store with the other acknowledged records."""
        self._check_range(partition)
        read = self._read.get(partition)
        if read is not None:
            read.pop(key, None)  # the store's value changes with this record

        def delivered(error: KafkaError | None, message: Any) -> None:
            self._acknowledge(error, message)
            on_delivery(error, message)
            self._persist_if_quiet()

        self._produce(producer, partition, key.encode(), value, delivered)

    def _produce(
        self,
        producer: Producer,
        partition: int,
        key: bytes,
        value: bytes | None,
        on_delivery: Callable[[KafkaError | None, Any], None] | None = None,
        meta: _Meta = None,
    ) -> None:
        on_delivery_or_ours: Callable[[KafkaError | None, Any], None]
        if on_delivery is not None:
            on_delivery_or_ours = on_delivery
        elif meta is None:
            on_delivery_or_ours = self._delivered
        else:
            on_delivery_or_ours = functools.partial(self._delivered, meta=meta)
        while True:
            try:
                producer.produce(self.topic, value=value, key=key, partition=partition, on_delivery=on_delivery_or_ours)
                if on_delivery is None:
                    self.in_flight += 1
                self._unacknowledged += 1
                return
            except BufferError:  # the producer's local queue is full: let it deliver, then retry
                producer.poll(0.05)

    def _delivered(self, error: KafkaError | None, message: Any, meta: _Meta = None) -> None:
        self.in_flight -= 1
        if error is not None:
            self._failed_deliveries.append(error)
        self._acknowledge(error, message, meta)
        self._persist_if_quiet()

    def _acknowledge(self, error: KafkaError | None, message: Any, meta: _Meta = None) -> None:
        self._unacknowledged -= 1
        acknowledged = self._acknowledged.get(message.partition())
        if error is None and acknowledged is not None:  # None: dropped since it was produced
            value = message.value()
            acknowledged.append((message.offset(), message.key(), value, meta))
            self._unwritten_bytes += len(value) if value is not None else 0

    def _meta(self, value: Any) -> _Meta:
        return self._kind(value), None if self._expiry_time is None else self._expiry_time(value)

    def _persist_if_quiet(self, force: bool = False) -> None:
        """Every produced record acknowledged and nothing sealed left to drain: the acknowledged records
        are the changelog's next ones, so they go into the stores, and their keys leave memory.

        The memory budget's writer writes them, a batch at a time when the loop has time
        (`StateMemory.on_write` reports how long each write took); a key leaves memory once its write is
        done, unless it was changed since the write was submitted or was dirty then (its newer value is not
        in the store yet). Until then reads find it in memory."""
        self._reap_written()
        if self._unacknowledged or any(self._draining.values()):
            return
        if not self._keep_written or self.memory.overlay_estimate() > self.memory.overlay_bytes * 3 // 4:
            for read in self._read.values():  # none is in a write under way (those keys are in the overlay)
                read.clear()
        if not force and not self._write_due():
            return
        batches: dict[int, list[_Record]] = {}
        forget: dict[int, list[str]] = {}
        for partition, acknowledged in self._acknowledged.items():
            if acknowledged:
                acknowledged.sort(key=_offset)  # without idempotence, reports may come out of order
                dirty = self._dirty[partition]
                batches[partition] = acknowledged
                forget[partition] = [text for text in {r[1].decode() for r in acknowledged} if text not in dirty]
                self._acknowledged[partition] = []
        self._unwritten_bytes = 0
        self._next_write = time.monotonic() + self._write_every
        if batches:
            done = self.memory.writer.submit(self._apply_all(batches))
            self._writes.append(_StoreWrite(done, forget, {p: set() for p in batches}))

    def _write_due(self) -> bool:
        return (
            not self._write_every
            or time.monotonic() >= self._next_write
            or self._unwritten_bytes > self.memory.overlay_bytes // DEFERRED_SHARE
        )

    def _apply_all(self, batches: dict[int, list[_Record]]) -> Iterator[int]:
        """The write of `_persist_if_quiet`, a batch per step (the loop runs it: store.StoreWriter)."""
        seconds = 0.0
        for partition, records in batches.items():
            batches_of_partition = self._apply(partition, records)
            while True:
                started = time.perf_counter()
                written = next(batches_of_partition, None)
                seconds += time.perf_counter() - started
                if written is None:
                    break
                yield written
        if self.memory.on_write is not None:
            self.memory.on_write(seconds)

    def _reap_written(self) -> None:
        """Let the keys of finished writes leave memory (in submission order); raise a write's failure."""
        while self._writes and self._writes[0].done.done():
            self._forget_written(self._writes.popleft())

    def wait_written(self) -> None:
        """Return once every acknowledged record handed to the writer is in the store (writing it now)."""
        while self._writes:
            self.memory.writer.finish(self._writes[0].done)
            self._forget_written(self._writes.popleft())

    def _forget_written(self, write: _StoreWrite) -> None:
        write.done.result()  # the store's error, if any, is the caller's now
        for partition, keys in write.forget.items():
            overlay = self._overlay.get(partition)
            if overlay is None:  # dropped since
                continue
            touched, read = write.touched[partition], self._read[partition]
            for key in keys:
                if key not in touched:
                    value = overlay.pop(key, _DELETED)
                    if self._keep_written and value is not _DELETED:
                        read[key] = value

    def _apply(self, partition: int, records: list[_Record]) -> Iterator[int]:
        """Write changelog records (offset order) into the partition's store, with their counts and expiry:
        each key's last record only, and no deletion of a key the store never held (a journal chunk
        written and pruned between two writes never reaches RocksDB).

        Those last records go in offset order, `STORE_WRITE_CHUNK` per atomic batch with the offset after
        its last record, one batch per step (yielding how many records it wrote). After a batch, every key
        whose last record lies before its offset has its final value, and every other key has a record
        at or after it, which a restore reading on from there applies."""
        store = self._stores[partition]
        last = {key: (offset, raw, meta) for offset, key, raw, meta in records}
        collapsed = sorted(((offset, key, raw, meta) for key, (offset, raw, meta) in last.items()), key=_offset)
        for start in range(0, len(collapsed), STORE_WRITE_CHUNK):
            chunk = collapsed[start : start + STORE_WRITE_CHUNK]
            self._apply_chunk(store, chunk)
            yield len(chunk)

    def _apply_chunk(self, store: PartitionStore, records: list[_Record]) -> None:
        """Records of distinct keys, in offset order, as one atomic batch."""
        replaced: list[bytes] = []  # stored values these records replace or delete
        kinds: list[str] = []  # of the values they store
        writes: list[tuple[bytes, bytes | None, float | None]] = []
        for (_offset, key, raw, meta), stored in zip(records, store.get_many([r[1] for r in records])):
            if stored is not None:
                replaced.append(stored)
            elif raw is None:
                continue
            if raw is None:
                writes.append((key, None, None))
                continue
            if meta is None and self._described:
                meta = self._meta(_decode(raw))
            kind, expires = meta or _UNDESCRIBED
            kinds.append(kind)
            writes.append((key, raw, expires))
        counts = Counter(store.counts)
        counts.subtract(Counter(map(self._stored_kind, replaced)))
        counts.update(kinds)
        store.write(writes, max(store.offset, records[-1][0] + 1), dict(+counts))

    def check_delivered(self) -> None:
        """Raise ChangelogDeliveryError if a changelog record reported failure since the last check
        (and a store write's failure, if one failed).

        Call it after the producer's flush() and before committing source offsets.
        """
        self._reap_written()
        if self._failed_deliveries:
            failed, self._failed_deliveries = self._failed_deliveries, []
            raise ChangelogDeliveryError(
                f"table {self.name!r}: {len(failed)} changelog records to {self.topic!r} "
                f"were not delivered; first: {failed[0].str()}"
            )


def _offset(record: _Record) -> int:
    return record[0]
