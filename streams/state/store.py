"""One partition of a changelog table on local disk: the changelog's records up to an offset, in RocksDB.

A `ChangelogTable` (streams/state/changelog.py) keeps each assigned partition in a `PartitionStore`, a
RocksDB database (through rocksdict, the binding Quix Streams uses) under
`<directory>/<partition>/`. The store holds exactly what the changelog partition's records
[0, `offset`) say, applied in order, never more: it is written only with records the broker has
acknowledged, at moments when every record produced before is acknowledged too, each write one atomic
batch with the new `offset`. So a worker that restarts reopens the store and reads the changelog from
`offset` on, instead of from the beginning; on Tansu, which never compacts, the changelog only grows and
a full replay grows with it.

No write-ahead log: the changelog is the log. RocksDB's own would write every record twice, and its
writes hold the GIL (rocksdict does not release it), so the loop waited for them: without it a
checkpoint's 7,000 records take half the time (4 against 10 ms). A write batch then reaches disk only
when the memtables are flushed, every column family at once (`atomic_flush`), so the offset on disk
always matches the values beside it; after `kill -9` the store reopens at its last flush, an older
offset, and the restore reads the changelog from there. Closing a store flushes it.

Column families
    default   key (UTF-8) -> value as in the changelog record (MessagePack, or JSON from old versions)
    meta      b"offset" -> the next changelog offset to apply (8 bytes, big-endian);
              b"counts" -> MessagePack {kind: live keys} (the table's `kind_of`, "" for a single kind)
    expiry    8-byte big-endian start of a second (milliseconds) + 8-byte big-endian store offset after
              the write -> MessagePack list of the keys that write gave an expiry time in that second
              (tables with an expiry time), so a sweep reads the entries due instead of every entry.
              One entry per second per write, not one per key: a checkpoint's thousands of join
              entries arrive within a second or two, and each put is Python work under the GIL.
              An entry goes once every key it lists is deleted or indexed elsewhere (`due`).
              Stores of earlier versions hold one entry per key (milliseconds + key -> b""): read alike.

Memory
    Every store of a process shares one `StateMemory`: RocksDB's block cache (data, index and filter
    blocks) and its memtables are capped by it, so a table's memory does not grow with its keys; the
    tables' in-memory overlay (values changed and not yet in the store) gets the rest of the budget.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import msgspec
import rocksdict

from driftloop.errors import DriftloopError

MB = 1024 * 1024
_META, _EXPIRY = "meta", "expiry"
_OFFSET_KEY, _COUNTS_KEY = b"offset", b"counts"
_encode = msgspec.msgpack.Encoder().encode
_decode_counts = msgspec.msgpack.Decoder(dict[str, int]).decode
_decode_keys = msgspec.msgpack.Decoder(list[bytes]).decode
# RocksDB refuses a second opener of a directory (its LOCK file): another worker of this host may still
# be closing a partition it just gave up, so an open waits this long before it fails.
OPEN_PATIENCE_S = 30.0


class StoreWriter:
    """Store writes, in submission order, run a batch at a time by the loop when it would otherwise wait
    (and by anyone who needs one finished: `finish`).

    A write is an iterator whose every step writes one batch (streams/state/changelog.py). The loop runs
    them itself because rocksdict holds the GIL while it writes: from a thread of their own they took the
    GIL from the loop at each of its Kafka calls (every one hands it over) for up to the interpreter's
    5 ms switch interval, a tax on every batch while a write lasted (docs/benchmarks.md, 8 Dec, eighth
    session)."""

    def __init__(self) -> None:
        self._writes: deque[tuple[Iterator[int], Future]] = deque()

    def submit(self, write: Iterator[int]) -> Future:
        """Queue a write whose steps each return how many records they wrote; its future is done after its
        last step (or failed with a step's error)."""
        done: Future = Future()
        self._writes.append((write, done))
        return done

    @property
    def idle(self) -> bool:
        return not self._writes

    def step(self) -> int:
        """Run the oldest write's next batch; how many records it wrote (0: nothing waited, or the write had
        no batch left and is done now)."""
        if not self._writes:
            return 0
        write, done = self._writes[0]
        try:
            return next(write)
        except StopIteration:
            self._writes.popleft()
            done.set_result(None)
        except Exception as exc:  # the store's error is its waiter's (ChangelogTable.wait_written)
            self._writes.popleft()
            done.set_exception(exc)
        return 0

    def run(self, records: int) -> None:
        """Run batches until `records` records are written or nothing waits."""
        while records > 0 and self._writes:
            records -= max(self.step(), 1)

    def finish(self, done: Future | None = None) -> None:
        """Run batches until the write of `done` (and every write before it) is finished; None: every write."""
        while self._writes and (done is None or not done.done()):
            self.step()


class StateMemory:
    """The memory budget of a process's state stores: a quarter RocksDB's block cache, a quarter its
    memtables, half the tables' overlays of changed values (a checkpoint is due when they exceed it).

    The block cache can be small: what it misses, the operating system's page cache serves from the
    store's files without counting against the process."""

    def __init__(self, megabytes: int):
        if megabytes < 8:
            raise ValueError(f"the state memory budget must be at least 8 MB, got {megabytes}")
        total = megabytes * MB
        self.megabytes = megabytes
        self.block_cache = rocksdict.Cache(total // 4)
        self.write_buffers = rocksdict.WriteBufferManager(total // 4, False)
        self.overlay_bytes = total // 2
        self.tables: list = []  # the ChangelogTables sharing this budget
        self.writer = StoreWriter()  # every table's acknowledged records on their way into the stores
        self.on_write: Callable[[float], None] | None = None  # told the seconds of each write (a metric)

    def overlay_estimate(self) -> int:
        return sum(table.overlay_estimate() for table in self.tables)

    def over_budget(self) -> bool:
        """True when the tables' changed values take more than their share: time for a checkpoint."""
        return self.overlay_estimate() > self.overlay_bytes

    def rocksdb_usage(self) -> int:
        return self.block_cache.get_usage() + self.write_buffers.get_usage()

    def options(self) -> rocksdict.Options:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(8 * MB)  # per database; the manager caps them all together
        options.set_max_write_buffer_number(2)
        options.set_compression_type(rocksdict.DBCompressionType.lz4())
        options.set_max_open_files(64)  # table readers are memory too
        options.set_keep_log_file_num(2)
        options.set_atomic_flush(True)  # the column families reach disk together: no log to replay them from
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.block_cache)
        table.set_bloom_filter(10, True)  # most joins look up an id that is not there yet
        table.set_cache_index_and_filter_blocks(True)  # so index and filters count against the cache too
        options.set_block_based_table_factory(table)
        return options


class PartitionStore:
    """One RocksDB database: the changelog partition's records [0, offset) applied, and their counts."""

    def __init__(self, path: Path, memory: StateMemory):
        self.path = path
        self._memory = memory
        self._attach()

    def _attach(self) -> None:
        self._db = self._open()
        no_log = rocksdict.WriteOptions()
        no_log.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; the stubs say method
        self._db.set_write_options(no_log)
        self._meta = self._db.get_column_family_handle(_META)
        self._expiry = self._db.get_column_family_handle(_EXPIRY)
        self._meta_view = self._db.get_column_family(_META)
        self._expiry_view = self._db.get_column_family(_EXPIRY)
        raw_offset, raw_counts = self._meta_view.get(_OFFSET_KEY), self._meta_view.get(_COUNTS_KEY)
        self.offset = int.from_bytes(raw_offset, "big") if raw_offset else 0
        self.counts: dict[str, int] = dict(_decode_counts(raw_counts)) if raw_counts else {}

    def _open(self) -> rocksdict.Rdict:
        self.path.mkdir(parents=True, exist_ok=True)
        options = self._memory.options()
        families = {_META: self._memory.options(), _EXPIRY: self._memory.options()}
        deadline = time.monotonic() + OPEN_PATIENCE_S
        while True:
            try:
                return rocksdict.Rdict(str(self.path), options, column_families=families)
            except Exception as exc:  # noqa: BLE001 (rocksdict raises plain Exceptions; a held LOCK is an IO error)
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise DriftloopError(f"cannot open the state store {self.path}: {exc}") from None
                time.sleep(0.2)

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    # The casts: rocksdict's stubs type keys and values for every mode; in raw mode both are bytes.
    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return cast(list[bytes | None], self._db.get(cast(list[Any], keys))) if keys else []

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return cast(Iterator[tuple[bytes, bytes]], self._db.items())

    def write(
        self, records: list[tuple[bytes, bytes | None, float | None]], offset: int, counts: dict[str, int]
    ) -> None:
        """Apply (key, value or None for a deletion, expiry time or None) in order, with the new offset and
        counts: one atomic batch."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        seconds: defaultdict[int, list[bytes]] = defaultdict(list)
        for key, value, expires in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
                if expires is not None:
                    seconds[int(expires) if expires > 0 else 0].append(key)  # _second, inlined: per record
        for second, keys in seconds.items():
            batch.put((second * 1000).to_bytes(8, "big") + offset.to_bytes(8, "big"), _encode(keys), self._expiry)
        batch.put(_OFFSET_KEY, offset.to_bytes(8, "big"), self._meta)
        batch.put(_COUNTS_KEY, _encode(counts), self._meta)
        self._db.write(batch)
        self.offset, self.counts = offset, counts

    def due(self, before: float) -> Iterator[tuple[bytes, Callable[[float], bool], list[bytes]]]:
        """(index key, covers, keys) of the expiry index's entries that may list a key due before `before`,
        oldest first; `covers(t)` says whether the entry indexes a value of the key whose expiry time is t."""
        bound = max(int(before * 1000), 0).to_bytes(8, "big")
        for index_key, listed in cast(Iterator[tuple[bytes, bytes]], self._expiry_view.items(from_key=None)):
            if index_key[:8] >= bound:
                return
            start = int.from_bytes(index_key[:8], "big")
            if listed:
                yield index_key, functools.partial(_in_second, start), _decode_keys(listed)
            else:  # an entry of a store written before buckets: one key, its millisecond
                yield index_key, functools.partial(_in_millisecond, start), [index_key[8:]]

    def forget_expiry(self, index_keys: list[bytes]) -> None:
        """Drop index entries whose key was deleted or re-written since (derived data: no offset moves)."""
        if index_keys:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for index_key in index_keys:
                batch.delete(index_key, self._expiry)
            self._db.write(batch)

    def wipe(self) -> None:
        """Forget everything (a changelog shorter than `offset` is not the one this store followed)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._attach()

    def close(self) -> None:
        del self._meta_view, self._expiry_view, self._meta, self._expiry  # rocksdict closes once unreferenced
        self._db.close()


def _in_millisecond(start: int, expires: float) -> bool:
    return max(int(expires * 1000), 0) == start


def _in_second(start: int, expires: float) -> bool:
    return _second(expires) * 1000 == start


def _second(expires: float) -> int:
    """The second of the expiry index's entry that lists a key with that expiry time."""
    return int(expires) if expires > 0 else 0
