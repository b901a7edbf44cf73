"""Writes the vectors the models scored to Feast: online (what is served now) and offline (the history).

A row is exactly what the scorer scored: `{<entity field>: id, "event_timestamp": <event time, epoch
seconds>, <each model input>: value}`. `FeastWriter.write(rows)` writes one batch:

- Offline first: the batch becomes one new parquet file in the feature view's batch-source directory
  (`feast_repo.offline_dir`), written under a `.tmp` name and renamed, so `get_historical_features`
  (which reads every `*.parquet` there) only ever sees whole files. Feast's own `offline_write_batch`
  rewrites the whole file on every call, which is quadratic over a run.
- Online: each entity's last row in the batch (per entity the last write wins, on SQLite and Redis, so
  the rows before it would be overwritten anyway), through the online store's `online_write_batch`.
  Its records (entity key, Feast `Value`s, event time) are built straight from the rows: equal to what
  `FeatureStore.write_to_online_store` builds through pandas and arrow, at half the cost. On SQLite the
  store is Feast's with batched upserts (features/feast/online_store.py). About 7.5k rows per CPU-second
  on SQLite (mostly SQLite's own upserts, one per input), 15k on Redis, where `write_to_online_store`
  managed 5k and 10k.

Column types come from the spec, never from the values of a batch, so every file has one schema and
an all-None column stays typed: int -> int64, bool -> bool, category/string -> string, windowed
features and float fields -> float64 (bit-exact), None -> null. A value of the wrong type fails the
batch before anything is written. Online, a float NaN is served as None, as Feast's own write serves
it, and a batch whose inputs are all None is skipped, as Feast's own write skips it.

The hot path uses the background mode: `submit(rows)` queues a batch and returns (it blocks only while
`max_pending_rows` rows are unwritten: backpressure). The batch is queued encoded: each row as a
MessagePack array of its columns (msgspec, which keeps each value's type and is three times faster than
pickle on the scoring thread's GIL), which is also what reaches the child process. A thread writes
everything queued so far as one batch, at most every `write_interval` seconds (a flush does not wait for
it), `flush(timeout)` returns once every submitted row is written (the worker calls it before committing
offsets) and raises the first write failure, which also fails every later call: rows were lost, so no
offset past them may be committed. `on_write(rows, seconds)` reports each write's latency.

Run `python -m driftloop.features.feast.writer --bench` to measure write throughput (JSON on stdout).
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from driftloop.child_process import receive, start_child
from driftloop.errors import DriftloopError
from driftloop.features.feast.repo import TIMESTAMP_COLUMN, feature_view_name, offline_dir, repo_config
from driftloop.schema import ModelInput, model_inputs
from driftloop.settings import Settings
from driftloop.spec import PipelineSpec

if TYPE_CHECKING:
    import pyarrow as pa

_LOG = logging.getLogger("driftloop.features.feast.writer")


_encode = msgspec.msgpack.Encoder().encode
# A queued write: its batches, each a MessagePack array of rows, each row an array of the columns' values.
_decode_batches = msgspec.msgpack.Decoder(list[list[list[Any]]]).decode
WRITER_NICENESS = 10  # added to the background writer process's nice value (lower CPU priority)
CHILD_START_TIMEOUT = 120.0  # seconds for the writer process to import Feast and open the store


class FeastWriteError(DriftloopError):
    """Rows could not be written to Feast (or not in time); offsets past them must not be committed."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What an online store's `online_write_batch` takes per entity: (EntityKey, {input: Value}, event time,
# created time).
_OnlineRecord = tuple[Any, dict[str, Any], datetime, datetime | None]


class _OnlineRecords:
    """Rows -> the records an online store's `online_write_batch` takes, each equal to what
    `FeatureStore.write_to_online_store` builds from the rows' table through pandas and arrow, at half
    the cost."""

    def __init__(self, spec: PipelineSpec):
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._entity_key, self._value = EntityKey, Value
        # Feast writes a None, and a float NaN (pandas reads it as missing), as a Value with no field set.
        self.missing = Value()
        self._bools = {True: Value(bool_val=True), False: Value(bool_val=False)}
        self._entity = spec.events.entity
        self._entity_is_int = spec.events.fields[self._entity].type == "int"
        self._inputs = model_inputs(spec)

    def build(self, rows: Sequence[dict[str, Any]]) -> list[_OnlineRecord]:
        value_proto, missing, bools = self._value, self.missing, self._bools
        # A batch repeats few category values: one Value each. Values are shared, not copied: the online
        # stores only serialise them (Feast itself shares one Value among the nulls of a column).
        strings: dict[str, Any] = {}

        def double(value: Any) -> Any:
            return missing if value is None or value != value else value_proto(double_val=float(value))

        def int64(value: Any) -> Any:
            return missing if value is None else value_proto(int64_val=int(value))

        def boolean(value: Any) -> Any:
            return missing if value is None else bools[bool(value)]

        def text(value: Any) -> Any:
            return missing if value is None else value_proto(string_val=str(value))

        def shared_text(value: Any) -> Any:
            proto = strings.get(value)
            if proto is None:
                proto = strings[value] = text(value)
            return proto

        by_feast_type = {"Float64": double, "Int64": int64, "Bool": boolean, "String": shared_text}
        inputs = [(i.name, by_feast_type[i.stored_as.feast]) for i in self._inputs]
        entity, entity_key = self._entity, self._entity_key
        entity_value = int64 if self._entity_is_int else text
        # The event time in whole microseconds, as rows_to_table stores it and Feast's own write took it
        # from there; no created time, as the feature view's source has no created-timestamp column.
        return [
            (
                entity_key(join_keys=[entity], entity_values=[entity_value(row[entity])]),
                {name: convert(row[name]) for name, convert in inputs},
                _EPOCH + timedelta(microseconds=round(row[TIMESTAMP_COLUMN] * 1_000_000)),
                None,
            )
            for row in rows
        ]

    def all_missing(self, records: Sequence[_OnlineRecord]) -> bool:
        return all(value is self.missing for _, values, _, _ in records for value in values.values())


class FeastWriter:
    """The feature view's writer and online reader; `write` and the reads may be called from any thread.

    With `separate_process` the store lives in the child, which first applies the spec's repository when
    `apply_repo` (as `feast apply` would): only `submit`, `flush` and the marks work here."""

    def __init__(
        self,
        settings: Settings,
        spec: PipelineSpec,
        *,
        max_pending_rows: int = 50_000,
        write_interval: float = 0.0,
        on_write: Callable[[int, float], None] | None = None,
        separate_process: bool = False,
        apply_repo: bool = False,
    ):
        self._view = feature_view_name(spec)
        self._entity = spec.events.entity
        self._inputs = spec.model_inputs
        self._columns = (self._entity, TIMESTAMP_COLUMN, *self._inputs)
        self._values_of = operator.itemgetter(*self._columns)
        self._on_write = on_write
        # In rows, not batches: queued batches coalesce into one write, so many small batches (a worker
        # at a low rate) are no more work than a few big ones, and bounding their number stalled the loop.
        self._max_pending_rows = max_pending_rows
        self._pending_rows = 0  # submitted and not yet written
        # Background writes start at most this often (unless a flush waits): a longer interval coalesces
        # more rows per write, and online only each entity's last row is written.
        self._write_interval = write_interval
        self._flushes_waiting = 0

        self._cond = threading.Condition()
        # Submitted batches, encoded at once (rows as arrays, a third of their size as dicts): a writer that
        # is behind holds max_pending_rows rows, 6 MB instead of 60 MB of dicts and their encoding.
        self._queue: list[tuple[bytes, int]] = []  # (encoded batch, rows)
        self._submitted = 0  # batches
        self._done = 0  # batches written, or dropped after a failure
        self._failure: FeastWriteError | None = None
        self._failure_raised = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._child: Any = None  # the writer process and our end of its pipe, in the background mode
        self._connection: Any = None
        if separate_process:
            # The child opens the store: this process never imports Feast (48 MB and seconds of CPU).
            self._start_child(settings, spec, apply_repo)
        else:
            self._open_store(settings, spec)

    def _open_store(self, settings: Settings, spec: PipelineSpec) -> None:
        from feast import FeatureStore, RepoConfig  # seconds to import: only processes that write pay for it
        from feast.errors import FeatureViewNotFoundException

        # The store is configured from the settings, not from feature_store.yaml, so it is the store
        # the settings name even if the yaml on disk was written by a process with other settings.
        config = RepoConfig(**repo_config(settings, spec))
        config.repo_path = settings.feast_repo.resolve()
        self._store = FeatureStore(repo_path=str(config.repo_path), config=config)
        self._store_lock = threading.Lock()  # the store's one SQLite connection is not safe to share
        try:
            feature_view = self._store.get_feature_view(self._view)
        except (FeatureViewNotFoundException, FileNotFoundError):  # no such view, or no registry at all
            raise DriftloopError(
                f"the Feast feature view {self._view!r} is not registered in "
                f"{config.registry.path}: `driftloop up` applies it"
            ) from None
        self._online_records = _OnlineRecords(spec)
        # On SQLite, the store feature_store.yaml names is features/feast/online_store.py's batched one.
        self._write_records = functools.partial(
            self._store.provider.online_write_batch, self._store.config, feature_view, progress=None
        )
        self._feature_refs = [f"{self._view}:{name}" for name in self._inputs]
        from driftloop.features.feast.arrow_rows import arrow_schema  # only a process that writes imports pyarrow

        self._schema = arrow_schema(spec)
        self._offline_dir = offline_dir(settings, spec)
        self._offline_dir.mkdir(parents=True, exist_ok=True)
        self._file_prefix = uuid.uuid4().hex[:12]  # several writers may share the directory
        self._file_numbers = itertools.count(1)

    def _start_child(self, settings: Settings, spec: PipelineSpec, apply_repo: bool) -> None:
        """Background writes happen in a child process, so Feast's Python (about 0.12 ms of CPU per row
        on SQLite) runs on another core and never holds the scoring thread's GIL; the writer thread
        only ships rows and waits. The child exits when the pipe closes (this process ended)."""
        self._child, self._connection = start_child(
            _serve_writes, (settings, spec, apply_repo), "driftloop-feast-writer"
        )
        # Wait until the child has imported Feast and opened the store: seconds of CPU that would
        # otherwise compete with the worker's first batches (and hold up the first write anyway).
        status, detail, _seconds = self._receive(CHILD_START_TIMEOUT)
        if status != "ready":
            raise FeastWriteError(f"the Feast writer process could not start: {detail}")

    def _receive(self, timeout: float | None = None) -> tuple[str, Any, float]:
        return receive(self._connection, self._child, "the Feast writer process", timeout, FeastWriteError)

    def _write_in_child(self, batches: bytes, rows: int) -> None:
        self._connection.send_bytes(batches)
        status, detail, seconds = self._receive()
        if status != "ok":
            raise FeastWriteError(detail)
        if self._on_write is not None:
            self._on_write(rows, seconds)

    # -- synchronous ----------------------------------------------------------------------------

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write one batch to the offline and the online store, in the calling thread."""
        if not rows:
            return
        started = time.perf_counter()
        from driftloop.features.feast.arrow_rows import rows_to_table

        table = rows_to_table(rows, self._schema)
        self._append_offline(table)
        # Online, only each entity's last row survives (last write wins), and the online write is the
        # slow part (~7.5k rows per CPU-second on SQLite): write just those rows. The history keeps
        # every row.
        latest = list({row[self._entity]: row for row in rows}.values())
        self._write_online(latest)
        if self._on_write is not None:
            self._on_write(len(rows), time.perf_counter() - started)

    def _write_online(self, rows: Sequence[dict[str, Any]]) -> None:
        records = self._online_records.build(rows)
        # FeatureStore.write_to_online_store skips a batch whose inputs are all missing (the entities
        # keep serving what they had): so does this, so what is served stays the same.
        if self._online_records.all_missing(records):
            return
        with self._store_lock:
            self._write_records(records)

    def _append_offline(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        name = f"{time.time_ns()}-{self._file_prefix}-{next(self._file_numbers)}.parquet"
        final = self._offline_dir / name
        partial = self._offline_dir / (name + ".tmp")  # not *.parquet: readers skip it
        pq.write_table(table, partial)
        os.replace(partial, final)

    # -- online reads ---------------------------------------------------------------------------

    def online_vectors(self, entity_ids: Sequence[Any]) -> list[dict[str, Any] | None]:
        """What the online store serves per entity, inputs in `spec.model_inputs` order; None for an unknown entity."""
        if not entity_ids:
            return []
        with self._store_lock:
            response = self._store.get_online_features(
                features=self._feature_refs, entity_rows=[{self._entity: e} for e in entity_ids]
            )
        columns = response.to_dict()
        # Every written row has an event time; an unknown entity has none. (Statuses cannot tell: Redis
        # reports an unknown entity's features as PRESENT, and a written None is an empty value too.)
        first_input = list(response.proto.metadata.feature_names.val).index(self._inputs[0])
        timestamps = response.proto.results[first_input].event_timestamps
        return [
            {name: columns[name][i] for name in self._inputs} if timestamps[i].ToNanoseconds() else None
            for i in range(len(entity_ids))
        ]

    def online_vector(self, entity_id: Any) -> dict[str, Any] | None:
        return self.online_vectors([entity_id])[0]

    def write_batches(self, batches: bytes) -> int:
        """Write queued batches (as `submit` encodes them) as one batch; returns the rows written."""
        columns = self._columns
        rows = [dict(zip(columns, values)) for batch in _decode_batches(batches) for values in batch]
        self.write(rows)
        return len(rows)

    # -- background -----------------------------------------------------------------------------

    def submit(self, rows: Sequence[dict[str, Any]]) -> None:
        """Queue a batch for the writer thread: its rows' columns (entity, event time, inputs) are encoded
        at once, in MessagePack (msgspec keeps each value's type), so the rows may change afterwards.

        Returns at once, unless `max_pending_rows` rows are unwritten: then it waits (backpressure).
        """
        if not rows:
            return
        values_of = self._values_of
        try:
            encoded = _encode([values_of(row) for row in rows])
        except (KeyError, TypeError) as exc:  # a row without a column, or a value MessagePack cannot hold
            raise FeastWriteError(f"a row cannot be queued for Feast: {type(exc).__name__}: {exc}") from exc
        with self._cond:
            if self._closing:
                raise FeastWriteError("the Feast writer is closed")
            if self._thread is None:
                # daemon: a worker that dies without close() still exits; its unflushed rows were never
                # committed, so they are consumed and written again.
                self._thread = threading.Thread(target=self._run, name="feast-writer", daemon=True)
                self._thread.start()
            while self._pending_rows >= self._max_pending_rows and self._failure is None:
                self._cond.wait()
            self._raise_failure()
            self._queue.append((encoded, len(rows)))
            self._submitted += 1
            self._pending_rows += len(rows)
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every batch submitted so far is written; raise if a write failed or `timeout` passed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            self._flushes_waiting += 1
            self._cond.notify_all()  # a writer waiting out its interval writes now
            try:
                while self._done < target and self._failure is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise FeastWriteError(
                            f"Feast writes did not finish within {timeout:g}s "
                            f"({target - self._done} batches still unwritten)"
                        )
                    self._cond.wait(remaining)
            finally:
                self._flushes_waiting -= 1
            self._raise_failure()

    def mark(self) -> int:
        """A position in the stream of submitted batches, for `written_through` (non-blocking checkpoints)."""
        with self._cond:
            return self._submitted

    def written_through(self, mark: int) -> bool:
        """True once every batch submitted before `mark` was taken is written; raises after a failed write."""
        with self._cond:
            self._raise_failure()
            return self._done >= mark

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the thread; raises a write failure that no flush has reported yet."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                _LOG.warning("the Feast writer thread did not finish within %gs; unwritten rows are lost", timeout)
        if self._child is not None:
            self._connection.close()  # the child's recv() ends: it exits
            self._child.join(timeout)
        with self._cond:
            if self._failure is not None and not self._failure_raised:
                self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            self._failure_raised = True
            raise self._failure

    def _write_due(self, next_write: float) -> bool:
        return bool(
            self._closing
            or self._flushes_waiting
            or time.monotonic() >= next_write
            or self._pending_rows >= self._max_pending_rows
        )

    def _run(self) -> None:
        next_write = time.monotonic()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                self._cond.wait_for(
                    functools.partial(self._write_due, next_write), timeout=max(next_write - time.monotonic(), 0)
                )
                next_write = time.monotonic() + self._write_interval
                if not self._queue:
                    return
                batches, self._queue = self._queue, []
            # Queued batches coalesce into one write: one MessagePack array of them, not decoded here.
            encoded, rows = _encode([msgspec.Raw(batch) for batch, _ in batches]), sum(n for _, n in batches)
            try:
                if self._child is None:
                    self.write_batches(encoded)
                else:
                    self._write_in_child(encoded, rows)
            except Exception as exc:  # every failure must reach flush(), whatever raised it
                with self._cond:
                    self._failure = FeastWriteError(f"writing {rows} rows to Feast failed: {type(exc).__name__}: {exc}")
                    self._failure.__cause__ = exc
                    self._done += len(batches) + len(self._queue)
                    self._queue = []
                    self._cond.notify_all()
                _LOG.error("%s", self._failure)
                return
            with self._cond:
                self._done += len(batches)
                self._pending_rows -= rows
                self._cond.notify_all()


def _serve_writes(settings: Settings, spec: PipelineSpec, apply_repo: bool, connection) -> None:
    """The child process of a `separate_process` writer: write each batch received, answer how it went.

    It ignores SIGINT/SIGTERM (a Ctrl-C or `driftloop up` stopping reaches the whole process group):
    the worker's last checkpoint still needs it, and it exits when the worker closes the pipe or dies.
    It runs at a lower CPU priority: its writes are background work (at most a second behind anyway),
    and on a busy small host they took CPU from the scoring loop when a batch was waiting for it.
    """
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    os.nice(WRITER_NICENESS)
    try:
        if apply_repo:
            from driftloop.features.feast.repo import apply

            apply(settings, spec)
        writer = FeastWriter(settings, spec)
    except Exception as exc:
        connection.send(("error", f"{type(exc).__name__}: {exc}", 0.0))
        return
    connection.send(("ready", "", 0.0))
    while True:
        try:
            batches = connection.recv_bytes()
        except EOFError:  # the worker closed the pipe, or is gone
            return
        started = time.perf_counter()
        try:
            writer.write_batches(batches)
        except Exception as exc:
            connection.send(("error", f"{type(exc).__name__}: {exc}", 0.0))
        else:
            connection.send(("ok", "", time.perf_counter() - started))


def _benchmark(argv: Sequence[str] | None = None) -> None:
    """Rows/s of Feast writes per online store (SQLite, and Redis when reachable), in a throwaway repo."""
    import argparse
    import json
    import random
    import tempfile

    import redis
    from feast.data_source import PushMode

    from driftloop.features.feast.arrow_rows import rows_to_table
    from driftloop.features.feast.repo import apply, push_source_name
    from driftloop.settings import DEMO_SPEC, load
    from driftloop.spec import load_spec

    parser = argparse.ArgumentParser(prog="python -m driftloop.features.feast.writer", description=_benchmark.__doc__)
    parser.add_argument("--bench", action="store_true", required=True, help="run the benchmark, print JSON")
    parser.add_argument("--spec", default=str(DEMO_SPEC))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--entities", type=int, default=5000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    # Its own Feast project, so the Redis keys it writes are its own and torn down afterwards.
    spec = load_spec(args.spec).model_copy(update={"name": f"bench_{uuid.uuid4().hex[:8]}"})
    rng = random.Random(1)
    inputs = model_inputs(spec)

    def value(model_input: ModelInput) -> Any:
        if model_input.type == "float":
            return rng.lognormvariate(3, 1)
        if model_input.type == "int":
            return rng.randrange(1000)
        if model_input.type == "bool":
            return rng.random() < 0.5
        return rng.choice(model_input.categories)

    start = time.time()
    batches = [
        [
            {
                spec.events.entity: f"e{rng.randrange(args.entities)}",
                TIMESTAMP_COLUMN: start + b + i / 1e4,
                **{m.name: value(m) for m in inputs},
            }
            for i in range(args.batch_size)
        ]
        for b in range(args.batches)
    ]
    rows = args.batches * args.batch_size

    def rows_per_second(write: Callable[[Any], None], items: Sequence[Any]) -> dict[str, int]:
        """Wall-clock rows/s, and rows per CPU second of this process (steadier on a busy machine)."""
        wall, cpu = time.perf_counter(), time.process_time()
        for item in items:
            write(item)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {"rows_per_s": round(rows / wall), "rows_per_cpu_s": round(rows / cpu)}

    # Feast's own write paths, rows converted as the writer converts them
    def write_to_online_store(writer: FeastWriter, view: str, schema: pa.Schema, batch: list[dict]) -> None:
        writer._store.write_to_online_store(view, rows_to_table(batch, schema).to_pandas())

    def push_online(writer: FeastWriter, push: str, schema: pa.Schema, batch: list[dict]) -> None:
        writer._store.push(push, rows_to_table(batch, schema).to_pandas(), to=PushMode.ONLINE)

    results: list[dict[str, Any]] = []
    for store in ("sqlite", "redis"):
        if store == "redis":
            try:
                redis.Redis.from_url(args.redis_url, socket_connect_timeout=2).ping()
            except redis.RedisError as exc:
                results.append({"store": store, "skipped": f"{args.redis_url}: {exc}"})
                continue
        with tempfile.TemporaryDirectory() as tmp:
            settings = load(
                environ={
                    "DRIFTLOOP_DATA_DIR": f"{tmp}/data",
                    "DRIFTLOOP_FEAST_REPO": f"{tmp}/repo",
                    "DRIFTLOOP_ONLINE_STORE": store,
                    "DRIFTLOOP_REDIS_URL": args.redis_url,
                }
            )
            feature_store = apply(settings, spec)
            writer = FeastWriter(settings, spec)
            view, push = feature_view_name(spec), push_source_name(spec)
            schema = writer._schema
            try:
                results.append(
                    {
                        "store": store,
                        "write": rows_per_second(writer.write, batches),
                        "online_write": rows_per_second(writer._write_online, batches),
                        "online_write_to_online_store": rows_per_second(
                            functools.partial(write_to_online_store, writer, view, schema), batches
                        ),
                        "online_push": rows_per_second(functools.partial(push_online, writer, push, schema), batches),
                        "offline_append": rows_per_second(
                            writer._append_offline, [rows_to_table(batch, schema) for batch in batches]
                        ),
                    }
                )
            finally:
                writer.close()
                feature_store.teardown()
    print(
        json.dumps(
            {
                "spec": args.spec,
                "batch_size": args.batch_size,
                "batches": args.batches,
                "entities": args.entities,
                "inputs": len(inputs),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    _benchmark()
