"""The data plane end to end on a real broker: a worker scores, dead-letters, joins, learns, writes Feast."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import pytest

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.features.feast.repo import apply as feast_apply
from driftloop.features.rows import Featuriser
from driftloop.load.generator import FraudStream, encode, produce
from driftloop.spec import load_spec
from driftloop.streams.contracts import original_bytes
from driftloop.streams.topology import Topology
from tests.support import ELEC2, SPECS
from tests.support.hostile import hostile_record
from tests.support.pipeline import (
    RunningWorker,
    consume_all,
    make_settings,
    pipeline_environ,
    start_worker_process,
    wait_for_log,
)

DEMO = SPECS / "fraud.yaml"


@pytest.fixture
def plane(tmp_path, kafka_bootstrap, unique):
    settings = make_settings(tmp_path, kafka_bootstrap, unique)
    spec = load_spec(settings.spec)
    feast_apply(settings, spec)
    worker = RunningWorker(settings)
    yield settings, spec, worker
    worker.close()


def test_every_input_ends_in_a_prediction_or_the_dlq_and_feast_serves_the_scoring_vector(plane):
    settings, spec, worker = plane
    bootstrap = settings.kafka_bootstrap_servers
    stream = FraudStream(seed=11, users=300, events_per_second=50)
    valid = 3000
    stats = produce(
        stream, bootstrap, settings.topic_events, settings.topic_outcomes, count=valid, label_delay_events=200
    )
    assert stats["events"] == valid
    rng = random.Random(5)
    # Megabyte records are refused by the broker itself (message.max.bytes), so they never reach a worker.
    hostile = [raw for raw in (hostile_record(rng, i, []) for i in range(400)) if raw is None or len(raw) < 500_000]
    producer = kafka.producer(bootstrap)
    for raw in hostile:
        producer.produce(settings.topic_events, raw, b"fuzz")
    producer.produce(settings.topic_events, hostile[3] if hostile[3] else b"x", b"fuzz")  # a redelivery
    assert producer.flush(30) == 0
    produced = valid + len(hostile) + 1

    topology = Topology.of(settings, spec)
    out = consume_all(
        bootstrap,
        [topology.predictions, topology.events_dlq, topology.labeled],
        lambda r: (
            len(r[topology.predictions]) + len(r[topology.events_dlq]) >= produced and len(r[topology.labeled]) >= valid
        ),
        timeout=120,
    )
    predictions = [json.loads(m.value()) for m in out[topology.predictions]]
    dead = [json.loads(m.value()) for m in out[topology.events_dlq]]
    assert len(predictions) + len(dead) == produced  # in = out + DLQ, nothing lost, nothing doubled
    stream_ids = {e["event_id"] for e, _ in stream.take(valid)}
    predicted_ids = [p["event_id"] for p in predictions]
    assert stream_ids <= set(predicted_ids)
    assert len(predicted_ids) == len(set(predicted_ids))
    for record in dead:  # every DLQ record carries the exact original bytes and a reason
        assert original_bytes(record) in set(hostile) | {b""}
        assert record["reason"] and record["source"]["topic"] == settings.topic_events
    assert all(p["variant"] == "champion" and p["model_name"] == spec.model.name for p in predictions)

    labeled = [json.loads(m.value()) for m in out[topology.labeled]]
    assert {r["event_id"] for r in labeled} == stream_ids  # every outcome met its prediction

    # Feast serves, per entity, exactly the vector that scored the entity's latest event.
    from driftloop.features.feast.writer import FeastWriter

    latest = {}
    for record in labeled:
        latest[record["entity"]] = max(latest.get(record["entity"], record), record, key=lambda r: r["event_time"])
    reader = FeastWriter(settings, spec)
    sample = list(latest.items())[:25]
    try:
        deadline = time.monotonic() + 30  # Feast writes trail predictions by up to a checkpoint or two
        while time.monotonic() < deadline and any(reader.online_vector(e) != r["features"] for e, r in sample):
            time.sleep(0.5)
        for entity, record in sample:
            assert reader.online_vector(entity) == record["features"], entity
    finally:
        reader.close()

    version = str(predictions[0]["model_version"])
    live_samples = ("driftloop_live_samples", (("model_version", version),))
    deadline = time.monotonic() + 30  # the learner reads `labeled` itself; gauges update every second
    while (worker_metrics := worker.metrics()).get(live_samples, 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker_metrics[live_samples] > 0
    assert worker_metrics[("driftloop_outcomes_total", (("result", "joined"),))] == valid
    assert worker_metrics[("driftloop_events_total", (("result", "predicted"),))] == len(predictions)
    assert worker_metrics[("driftloop_events_total", (("result", "dead_lettered"),))] == len(dead)


def test_two_workers_split_the_partitions_and_join_across_them(tmp_path, kafka_bootstrap, unique):
    """With two workers, a prediction scored by one may belong to a join partition the other owns: it
    travels through the internal topics and still meets its outcome exactly once."""
    settings = make_settings(tmp_path, kafka_bootstrap, unique)
    spec = load_spec(settings.spec)
    feast_apply(settings, spec)
    topology = Topology.of(settings, spec)
    workers = [RunningWorker(settings), RunningWorker(settings)]
    try:
        stream = FraudStream(seed=29, users=200, events_per_second=20)
        count = 3000
        # Over 10 s: the second worker's join (a rebalance takes seconds on the embedded broker) comes
        # while the stream still flows, so both score part of it.
        produce(
            stream,
            kafka_bootstrap,
            settings.topic_events,
            settings.topic_outcomes,
            count=count,
            rate=300,
            label_delay_events=100,
        )
        ids = {e["event_id"] for e, _ in stream.take(count)}
        out = consume_all(
            kafka_bootstrap,
            [topology.labeled, topology.pending],
            lambda r: {json.loads(m.value())["event_id"] for m in r[topology.labeled]} >= ids,
            timeout=180,
        )
        labeled = [json.loads(m.value()) for m in out[topology.labeled]]
        assert {r["event_id"] for r in labeled} == ids
        labels = {e["event_id"]: o["is_fraud"] for e, o in stream.take(count)}
        assert all(r["label"] == labels[r["event_id"]] for r in labeled)
        # Both ways were taken: some predictions stayed in their worker, some crossed over through the
        # pending topic. (Outcomes keyed by event id, as here, sit on their join partition already:
        # librdkafka's default partitioner is the same CRC-32; a Java producer's murmur2 would cross.)
        assert 0 < len(out[topology.pending]) < count
        scored = [w.metrics().get(("driftloop_events_total", (("result", "predicted"),)), 0) for w in workers]
        assert all(n > 0 for n in scored)  # each worker scored its share
    finally:
        for worker in workers:
            worker.close()


def test_a_killed_worker_restarts_and_loses_nothing(tmp_path, kafka_bootstrap, unique):
    environ = pipeline_environ(tmp_path, kafka_bootstrap, unique)
    settings = settings_module.load(environ=environ)
    spec = load_spec(settings.spec)
    feast_apply(settings, spec)
    topology = Topology.of(settings, spec)
    kafka.ensure_topics(kafka_bootstrap, settings.topics, settings.partitions)  # as `driftloop up` does
    stream = FraudStream(seed=23, users=200, events_per_second=20)
    count = 4000
    # Paced from the moment the worker consumes, so that the kill lands mid-stream: produced at once,
    # the first worker could finish the whole stream before the reader saw its first predictions, and
    # the restart would test nothing.
    producing = threading.Thread(
        target=produce,
        args=(stream, kafka_bootstrap, settings.topic_events, settings.topic_outcomes),
        kwargs={"count": count, "rate": 200, "label_delay_events": 300},
    )
    log = tmp_path / "worker.log"
    first = start_worker_process(environ, log)
    try:
        wait_for_log(log, "worker consuming")
        producing.start()
        out = consume_all(
            kafka_bootstrap, [topology.predictions], lambda r: len(r[topology.predictions]) >= 600, timeout=120
        )
        assert len(out[topology.predictions]) >= 600, log.read_text()[-3000:]
        assert producing.is_alive(), "the stream ended before the kill: it would not land mid-stream"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no checkpoint, no goodbye to the group
        first.wait(10)
    second = start_worker_process(environ, log)
    try:
        ids = {e["event_id"] for e, _ in stream.take(count)}
        out = consume_all(
            kafka_bootstrap,
            [topology.predictions, topology.labeled],
            lambda r: (
                {json.loads(m.value())["event_id"] for m in r[topology.labeled]} >= ids
                and len({json.loads(m.value())["event_id"] for m in r[topology.predictions]}) >= count
            ),
            timeout=180,
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, log.read_text()[-3000:]
        if producing.is_alive():
            producing.join(60)
    predicted = {json.loads(m.value())["event_id"] for m in out[topology.predictions]}
    labeled = [json.loads(m.value()) for m in out[topology.labeled]]
    assert predicted == ids  # at-least-once: a record may be scored twice around the kill, never lost
    assert {r["event_id"] for r in labeled} == ids

    # The restored window state is exact: each entity's last event scored on the features an
    # uninterrupted pass computes (replayed records were not counted twice).
    featuriser, expected = Featuriser(spec), {}
    for event_doc, _ in stream.take(count):
        event, row = featuriser.featurise(encode(event_doc))
        expected[event.entity] = (event.event_id, row)
    by_id = {}
    for record in labeled:  # at-least-once: around the kill an event may be labeled twice; the first counts
        by_id.setdefault(record["event_id"], record["features"])
    for entity, (event_id, row) in expected.items():
        assert by_id[event_id] == row, entity


def test_a_worker_stopped_while_it_starts_exits_cleanly(tmp_path, kafka_bootstrap, unique):
    """A SIGTERM during the seconds of imports (an operator's stop, a supervisor's restart) stops it, not kills it."""
    environ = pipeline_environ(tmp_path, kafka_bootstrap, unique)
    settings = settings_module.load(environ=environ)
    feast_apply(settings, load_spec(settings.spec))
    kafka.ensure_topics(kafka_bootstrap, settings.topics, settings.partitions)
    log = tmp_path / "worker.log"
    worker = start_worker_process(environ, log)
    try:
        time.sleep(1.0)  # importing MLflow, River and onnxruntime takes it several seconds
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()


@pytest.mark.skipif(not ELEC2.is_file(), reason=f"{ELEC2} (the shared elec2 dataset) is not here")
def test_replaying_a_public_drifting_dataset_through_the_live_worker(tmp_path, kafka_bootstrap, unique):
    from driftloop.load.replay import replay

    settings = settings_module.load(environ=pipeline_environ(tmp_path, kafka_bootstrap, unique, SPECS / "elec2.yaml"))
    spec = load_spec(settings.spec)
    feast_apply(settings, spec)
    worker = RunningWorker(settings)
    try:
        report = replay(settings, ELEC2, limit=3000, rate=500, entity_value="nsw", timeout=60).as_dict()
    finally:
        worker.close()
    assert report["predicted"] == 3000 and report["missing"] == 0 and report["dead_lettered"] == 0
    metrics = report["metrics"]
    # The model starts cold and learns as outcomes come back: by the second half of the replay it must
    # clearly beat always guessing the majority class.
    later = [d["accuracy"] for d in metrics["deciles"][5:]]
    assert sum(later) / len(later) > metrics["baselines"]["majority_class"] + 0.1, metrics
