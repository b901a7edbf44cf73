"""Nothing lost, nothing counted twice: hostile records and `kill -9` against a real worker on a real broker."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.features.feast.repo import apply as feast_apply
from driftloop.features.rows import Featuriser
from driftloop.load.generator import FraudStream, encode
from driftloop.spec import load_spec
from driftloop.streams.topology import Topology
from tests.support.pipeline import (
    RunningWorker,
    consume_all,
    make_settings,
    pipeline_environ,
    start_worker_process,
    wait_for_log,
)

NOW = time.time()
BIG_PRODUCER = {"message.max.bytes": 12_000_000}  # a user's client may send records this large


def _event(event_id: str, user: str = "u-1", **changes) -> dict:
    doc = {
        "event_id": event_id,
        "user_id": user,
        "event_time": NOW - 60,
        "amount": 12.5,
        "merchant_category": "grocery",
        "country": "NL",
        "channel": "pos",
        "card_present": True,
        "account_age_days": 400,
    }
    doc.update(changes)
    return doc


def hostile_records() -> list[tuple[bytes | None, bytes | None, str]]:
    """(key, value, what) for every kind of bad input the README promises to survive."""
    big_padding = "A" * 1_000_000
    records = [
        (b"u-1", os.urandom(200), "random bytes"),
        (b"u-1", encode(_event("h-trunc"))[:40], "truncated JSON"),
        (b"u-1", encode(_event("h-1mb", padding=big_padding)), "a 1 MB value"),
        (b"u-1", encode(_event("h-5mb", padding=big_padding * 5)), "a 5 MB value"),
        (b"u-1", b"[" * 10_000 + b"]" * 10_000, "10,000-deep nesting"),
        (b"u-1", b'{"event_id":"h-nul\x00","user_id":"u-1"}', "a NUL byte"),
        (b"u-1", b"", "an empty value"),
        (b"u-1", None, "a null value (tombstone)"),
        (None, encode(_event("h-nullkey")), "a null key, otherwise valid"),
        (b"k" * 2_000_000, encode(_event("h-bigkey")), "a 2 MB key, otherwise valid"),
        (b"u-1", encode(_event("h-type", amount="12.5")), "a wrong type"),
        (b"u-1", encode(_event("h-nan", amount=1.0)).replace(b"1.0", b"NaN"), "NaN"),
        (b"u-1", encode(_event("h-inf", amount=1.0)).replace(b"1.0", b"Infinity"), "Infinity"),
        (b"u-1", encode(_event("h-2e70", account_age_days=2**70)), "a 2^70 integer"),
        (b"u-1", encode(_event("h-future", event_time=NOW + 10 * 365 * 86400)), "a far-future timestamp"),
        (b"u-1", encode(_event("h-1970", event_time=0)), "a 1970 timestamp, otherwise valid"),
        (b"u-new", encode(_event("h-unknown", user="u-never-seen-before")), "an unknown entity, valid"),
        (b"u-1", encode(_event("h-dup")), "an id ..."),
        (b"u-2", encode(_event("h-dup", user="u-2")), "... and the same id on another partition's entity"),
    ]
    return records


def _produce_tracked(bootstrap: str, topic: str, records, partition_of=None) -> list[tuple[int, int]]:
    """Produce and return each record's (partition, offset), in order."""
    where: dict[int, tuple[int, int]] = {}
    producer = kafka.producer(bootstrap, **BIG_PRODUCER)
    for i, (key, value, *_what) in enumerate(records):

        def delivered(err, msg, i=i):
            assert err is None, err
            where[i] = (msg.partition(), msg.offset())

        partition = partition_of(i) if partition_of else None
        if partition is None:
            producer.produce(topic, value, key, on_delivery=delivered)
        else:
            producer.produce(topic, value, key, partition, on_delivery=delivered)
    assert producer.flush(60) == 0
    return [where[i] for i in range(len(records))]


def _outputs_by_source(settings, spec, count: int, timeout: float, settle: float = 0.0):
    """Predictions and dead letters, read until there are `count`, then for `settle` more seconds."""
    topology = Topology.of(settings, spec)
    consumer = kafka.consumer(settings.kafka_bootstrap_servers, f"reader-{time.time_ns()}")
    consumer.subscribe([topology.predictions, topology.events_dlq])
    records: dict[str, list] = {topology.predictions: [], topology.events_dlq: []}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is None:
                    records[m.topic()].append(m)
            if sum(map(len, records.values())) >= count:
                deadline = min(deadline, time.monotonic() + settle)
    finally:
        consumer.close()
    return records[topology.predictions], records[topology.events_dlq]


def test_each_hostile_record_ends_as_one_prediction_or_one_dead_letter(tmp_path, kafka_bootstrap, unique):
    settings = make_settings(tmp_path, kafka_bootstrap, unique)
    spec = load_spec(settings.spec)
    feast_apply(settings, spec)
    worker = RunningWorker(settings)
    try:
        records = hostile_records()
        # the duplicate pair goes to two partitions (there are two): the filter is per partition
        where = _produce_tracked(
            kafka_bootstrap,
            settings.topic_events,
            records,
            partition_of=lambda i: i % 2 if i >= len(records) - 2 else None,
        )
        # read on for 3 s once every record has an output: anything more would be a second one
        predictions, dead = _outputs_by_source(settings, spec, len(records), timeout=90, settle=3.0)

        by_source = {
            (d["source"]["partition"], d["source"]["offset"]): d for d in (json.loads(m.value()) for m in dead)
        }
        predicted_ids = [json.loads(m.value())["event_id"] for m in predictions]
        for (_key, value, what), position in zip(records, where):
            envelope = by_source.get(position)
            if envelope is None:
                continue  # predicted: checked below by id
            assert envelope["original_size"] == len(value or b""), what
            assert envelope["original_truncated"] == (len(value or b"") > 256 * 1024), what
        assert all(len(m.value()) < 1_000_000 for m in dead)  # every envelope fits the producer's limit
        big = [json.loads(m.value()) for m in dead if json.loads(m.value())["original_truncated"]]
        assert {d["original_size"] for d in big} == {len(records[2][1]), len(records[3][1])}
        assert sorted(predicted_ids) == sorted(["h-nullkey", "h-bigkey", "h-1970", "h-unknown", "h-dup", "h-dup"])
        assert len(predictions) + len(dead) == len(records)
        # Junk on the other topics a worker reads: outcomes (dead-lettered), and the labeled and internal
        # topics anyone with access can write to (skipped and counted)
        topology = Topology.of(settings, spec)
        bad_outcomes = [
            (b"e", b"A" * 5_000_000, "5 MB"),
            (None, b"{", "truncated"),
            (b"e", None, "tombstone"),
            (b"e", b'{"event_id":"h-dup","is_fraud":7}', "a label that is not 0/1"),
        ]
        _produce_tracked(kafka_bootstrap, settings.topic_outcomes, bad_outcomes)
        junk = [(None, b"\x00junk", ""), (b"x", b'{"event_id":1}', ""), (b"x", None, "")]
        for topic in (settings.topic_labeled, topology.pending):
            _produce_tracked(kafka_bootstrap, topic, junk)
        # ... and the worker is still there, scoring and joining
        _produce_tracked(kafka_bootstrap, settings.topic_events, [(b"u-1", encode(_event("after")), "valid")])
        _produce_tracked(
            kafka_bootstrap, settings.topic_outcomes, [(b"after", b'{"event_id":"after","is_fraud":1}', "valid")]
        )
        out = consume_all(
            kafka_bootstrap,
            [settings.topic_labeled, topology.outcomes_dlq],
            lambda r: (
                len(r[topology.outcomes_dlq]) >= len(bad_outcomes)
                and "after"
                in {
                    json.loads(m.value()).get("event_id")
                    for m in r[settings.topic_labeled]
                    if m.value() and m.value().startswith(b"{")
                }
            ),
            timeout=60,
        )
        assert len(out[topology.outcomes_dlq]) == len(bad_outcomes)
        assert all(len(m.value()) < 1_000_000 for m in out[topology.outcomes_dlq])
        assert any(m.value() and b'"after"' in m.value() for m in out[settings.topic_labeled])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            bad = {
                labels: value
                for (name, labels), value in worker.metrics().items()
                if name == "driftloop_bad_records_total"
            }
            if sum(bad.values()) >= 2 * len(junk):
                break
            time.sleep(0.5)
        assert bad == {(("topic", settings.topic_labeled),): len(junk), (("topic", topology.pending),): len(junk)}
    finally:
        worker.close()


# hostile_records() that are dead-lettered whatever their key (the 5 MB one only in the first test)
DEAD_LETTERED_KINDS = (0, 1, 2, 4, 5, 6, 7, 10, 11, 12, 13, 14)


class _LoadWithHostility(threading.Thread):
    """Produces the fraud stream at `rate` events/s with its outcomes, and a hostile record every 100 events."""

    def __init__(self, bootstrap: str, settings, stream: FraudStream, count: int, rate: float):
        super().__init__(daemon=True)
        self.bootstrap, self.settings, self.stream, self.count, self.rate = bootstrap, settings, stream, count, rate
        self.hostile: dict[tuple[int, int], bytes | None] = {}  # (partition, offset) -> value
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _run(self) -> None:
        hostile = hostile_records()
        producer = kafka.producer(self.bootstrap, **BIG_PRODUCER)
        waiting = []
        started = time.perf_counter()
        for i, (event, outcome) in enumerate(self.stream.take(self.count)):
            ahead = started + i / self.rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            producer.produce(self.settings.topic_events, encode(event), event["user_id"].encode())
            waiting.append(outcome)
            if len(waiting) > 200:
                late = waiting.pop(0)
                producer.produce(self.settings.topic_outcomes, encode(late), late["event_id"].encode())
            if i % 100 == 50:
                key, value, _what = hostile[DEAD_LETTERED_KINDS[(i // 100) % len(DEAD_LETTERED_KINDS)]]

                def delivered(err, msg, value=value):
                    assert err is None, err
                    self.hostile[(msg.partition(), msg.offset())] = value

                producer.produce(self.settings.topic_events, value, key, on_delivery=delivered)
            producer.poll(0)
        for late in waiting:
            producer.produce(self.settings.topic_outcomes, encode(late), late["event_id"].encode())
        assert producer.flush(60) == 0


def _metrics(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _read_until_accounted(
    bootstrap: str, topology: Topology, ids: set[str], hostile: set[tuple[int, int]], timeout: float
) -> dict[str, list]:
    """Predictions, labeled and dead letters, until every id is predicted and labeled and every hostile
    record dead-lettered (then 3 s more, for duplicates still on their way)."""
    topics = [topology.predictions, topology.labeled, topology.events_dlq]
    consumer = kafka.consumer(bootstrap, f"reader-{time.time_ns()}")
    consumer.subscribe(topics)
    records: dict[str, list] = {topic: [] for topic in topics}
    predicted, labeled, dead = set(), set(), set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(5000, timeout=0.5):
                if m.error() is not None:
                    continue
                records[m.topic()].append(m)
                doc = json.loads(m.value())
                if m.topic() == topology.events_dlq:
                    dead.add((doc["source"]["partition"], doc["source"]["offset"]))
                else:
                    (predicted if m.topic() == topology.predictions else labeled).add(doc["event_id"])
            if predicted >= ids and labeled >= ids and dead >= hostile:
                deadline = min(deadline, time.monotonic() + 3)
    finally:
        consumer.close()
    return records


def test_kill_9_under_load_loses_nothing_and_counts_nothing_twice(tmp_path, kafka_bootstrap, unique):
    """Two `kill -9`s of a worker fed 2,000 events/s on 4 partitions: every event is predicted and joined,
    every hostile record dead-lettered; an event predicted twice was predicted the same both times (the
    placeholder model learns online, so a re-scored event would differ); and every event's features are
    what an uninterrupted pass computes: no window counted a replayed record twice."""
    environ = pipeline_environ(tmp_path, kafka_bootstrap, unique, DRIFTLOOP_PARTITIONS="4")
    settings = settings_module.load(environ=environ)
    spec = load_spec(settings.spec)
    feast_apply(settings, spec)
    topology = Topology.of(settings, spec)
    kafka.ensure_topics(kafka_bootstrap, settings.topics, settings.partitions)
    stream = FraudStream(seed=41, users=300, events_per_second=20)
    count = 36_000
    load = _LoadWithHostility(kafka_bootstrap, settings, stream, count, rate=1000)
    log = tmp_path / "worker.log"
    worker = start_worker_process(environ, log)
    kills, recovered = 0, 0.0
    try:
        wait_for_log(log, "assigned", 1)
        load.start()
        for assignments in (2, 3):
            time.sleep(2.5)  # consuming live: records consumed and not yet committed are in flight
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
            kills += 1
            worker = start_worker_process(environ, log)
            wait_for_log(log, "assigned", assignments)
        load.join(120)
        assert load.error is None, load.error
        ids = {e["event_id"] for e, _ in stream.take(count)}
        out = _read_until_accounted(kafka_bootstrap, topology, ids, set(load.hostile), timeout=240)
        port = log.read_text().rsplit("metrics at http://127.0.0.1:", 1)[1].split("/", 1)[0]
        recovered = sum(
            value
            for (name, _labels), value in _metrics(int(port)).items()
            if name == "driftloop_recovered_events_total"
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()[-3000:]
    assert kills == 2 and recovered > 0  # the last worker did consume records its predecessor had handled

    predictions = defaultdict(list)
    for m in out[topology.predictions]:
        predictions[json.loads(m.value())["event_id"]].append(json.loads(m.value()))
    assert set(load.hostile), "no hostile record was produced"
    assert set(predictions) == ids, "an event was never predicted"
    twice = {event_id: docs for event_id, docs in predictions.items() if len(docs) > 1}
    assert all(doc == docs[0] for docs in twice.values() for doc in docs), "a second prediction differs"

    dead = defaultdict(list)
    for m in out[topology.events_dlq]:
        doc = json.loads(m.value())
        dead[(doc["source"]["partition"], doc["source"]["offset"])].append(doc)
    assert set(dead) == set(load.hostile), "a hostile record was lost, or a valid one dead-lettered"
    for docs in dead.values():
        assert all({**d, "dead_lettered_at": None} == {**docs[0], "dead_lettered_at": None} for d in docs)

    labeled = defaultdict(list)
    for m in out[topology.labeled]:
        labeled[json.loads(m.value())["event_id"]].append(json.loads(m.value()))
    assert set(labeled) == ids
    for docs in labeled.values():
        assert all({**d, "joined_at": None} == {**docs[0], "joined_at": None} for d in docs)

    featuriser = Featuriser(spec)
    for event_doc, _ in stream.take(count):
        event, row = featuriser.featurise(encode(event_doc))
        assert labeled[event.event_id][0]["features"] == row, event.event_id
    print(
        f"{kills} kills; the last worker recovered {recovered:.0f} records; "
        f"{sum(map(len, predictions.values())) - len(ids)} events predicted twice, "
        f"{sum(map(len, labeled.values())) - len(ids)} labeled twice"
    )
