"""The retraining worker end to end: a real broker, a real Feast repo, real MLflow (SQLite) and Evidently.

One concept-drifted labelled stream (the demo generator, abrupt concept drift: the fraud pattern flips) is
written once to `labeled` and to Feast; each test runs the worker on it with its own registry and topics.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import TopicPartition
from mlflow.tracking import MlflowClient

from driftloop import kafka
from driftloop.features.feast.repo import apply as feast_apply
from driftloop.features.feast.repo import feature_view_name, feature_view_version
from driftloop.features.feast.writer import FeastWriter
from driftloop.models import registry
from driftloop.models.bootstrap import CHAMPION, PLACEHOLDER_TAG, ensure_champion
from driftloop.models.flavors import new_model, with_model
from driftloop.models.live_metrics import roc_auc
from driftloop.models.routing import CHALLENGER
from driftloop.retrain.registration import FINGERPRINT_TAG, GATE_TAG, REJECTED_TAG, REQUEST_TAG
from driftloop.retrain.worker import run_retrain_worker
from driftloop.signing import configured_key
from driftloop.spec import load_spec
from driftloop.streams import contracts
from tests.support.pipeline import empty_registry
from tests.support.training import (
    feast_row,
    labeled_record,
    publish,
    scored_stream,
    training_settings,
    write_feast,
    write_spec,
)

PRE, POST = 2000, 2400  # events before and after the drift onset
WINDOW = 1600  # retrain.window_events: the newest 1,600 post-drift events; the holdout is the newest 400
RETRAIN = {"window_events": WINDOW, "min_rows": 400, "holdout_share": 0.25, "gate_metric": "roc_auc"}


SERVED_BY = 999


@pytest.fixture(scope="module")
def drifted(tmp_path_factory, kafka_bootstrap):
    """The shared pipeline: (directory, spec name, suffix, scored stream, drift onset time), written once."""
    directory = tmp_path_factory.mktemp("retrain")
    name, suffix = f"rw_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    spec_path = write_spec(directory / "spec.yaml", name, **RETRAIN)
    settings = training_settings(directory, kafka_bootstrap, suffix, spec_path)
    spec = load_spec(spec_path)
    feast_apply(settings, spec)
    kafka.ensure_topics(kafka_bootstrap, [settings.topic_labeled], settings.partitions)
    stream = scored_stream(spec, PRE + POST, seed=21, onset=PRE, fraud_rate=0.08)
    writer = FeastWriter(settings, spec)
    write_feast(writer, [feast_row(spec, e, r) for e, r, _ in stream], batch=400)
    writer.close()
    # Served by a version no test registers as champion, so the champions here are judged by their
    # snapshots; test_the_champion_is_judged_by_the_scores_it_served covers live scores.
    publish(
        kafka_bootstrap,
        settings.topic_labeled,
        [(e.entity, labeled_record(spec, e, r, label, model_version=SERVED_BY)) for e, r, label in stream],
    )
    # One MLflow database (its schema migrations take seconds); each test registers its own model in it.
    empty_registry(directory / "mlflow.db")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    registry.ensure_experiment(spec.name, tracking_uri=uri, artifact_location=str(directory / "artifacts"))
    return directory, name, suffix, stream, stream[PRE][0].event_time, uri


def _setup(drifted, tmp_path, kafka_bootstrap, **retrain):
    """Settings sharing the drifted stream's labeled topic, Feast store and MLflow database, with own
    request/audit topics and a spec of the same name (same Feast project) registering its own model
    with these retrain settings."""
    directory, name, suffix, stream, onset, uri = drifted
    own = uuid.uuid4().hex[:8]
    spec_path = write_spec(tmp_path / "spec.yaml", name, model_name=f"{name}_{own}", **{**RETRAIN, **retrain})
    settings = training_settings(directory, kafka_bootstrap, suffix, spec_path).replace(
        topic_retrain_requests=f"retrain-requests-{own}", topic_audit=f"audit-{own}"
    )
    return settings, load_spec(spec_path), uri, stream, onset


def _request(
    bootstrap, settings, spec, request_id, train_from, champion_version, current_rows=None, reason="concept_drift"
):
    # the audit topic too: a reader subscribing to a topic that does not exist yet may not see it for minutes
    kafka.ensure_topics(bootstrap, [settings.topic_retrain_requests, settings.topic_audit], settings.partitions)
    value = contracts.retrain_request(
        request_id=request_id,
        model_name=spec.model.name,
        champion_version=champion_version,
        reason=reason,
        train_from=train_from,
        current_rows=current_rows,
        drift_report={"kind": "concept", "detector": "adwin", "drift_at": contracts.iso_time(train_from)},
    )
    publish_signed(bootstrap, settings.topic_retrain_requests, spec.model.name, value)


def publish_signed(bootstrap, topic, key, value):
    """A record signed as the control plane signs its retrain requests."""
    producer = kafka.producer(bootstrap)
    producer.produce(
        topic, key=key.encode(), value=value, headers=contracts.signature_headers(configured_key(), topic, value)
    )
    assert producer.flush(30) == 0


class Worker:
    def __init__(self, settings, bootstrap, uri, **options):
        self.stop, self.error = threading.Event(), None

        def run():
            try:
                run_retrain_worker(settings, self.stop, bootstrap=bootstrap, tracking_uri=uri, **options)
            except BaseException as exc:  # surfaced by the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the retrain worker did not stop"
        if self.error:
            raise self.error


def _audits(bootstrap, topic, until, timeout=90.0):
    """The audit records, read from the start until until(records) holds (or timeout)."""
    consumer = kafka.consumer(bootstrap, f"audit-reader-{uuid.uuid4().hex}")
    consumer.subscribe([topic])
    records, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            for m in consumer.consume(100, timeout=0.5):
                if m.error() is None:
                    records.append(json.loads(m.value()))
    finally:
        consumer.close()
    return records


def _audits_until_decided(settings, bootstrap, uri):
    """Run a retrain worker until the request is decided; its audit records."""
    worker = Worker(settings, bootstrap, uri)
    try:
        return _audits(bootstrap, settings.topic_audit, _decided)
    finally:
        worker.close()


def _decided(records):
    return any(r["action"] in ("challenger_set", "rejected", "retrain_failed", "promoted") for r in records)


def _champion(spec, uri, rows, labels):
    """A River champion (it learns online, as a live one would have) taught `rows`, registered as `champion`."""
    river = with_model(spec, "river", "logistic_regression")
    model = new_model(river)
    model.learn(rows, labels)
    info = registry.register(
        model, river, tracking_uri=uri, reference_rows=rows[-500:], tags={"driftloop.origin": "test"}
    )
    registry.set_alias(spec.model.name, CHAMPION, info.version, tracking_uri=uri)
    return info.version


def _committed(bootstrap, settings, spec):
    consumer = kafka.consumer(bootstrap, f"driftloop-{spec.name}-retrain")
    try:
        partitions = (
            consumer.list_topics(settings.topic_retrain_requests, timeout=10)
            .topics[settings.topic_retrain_requests]
            .partitions
        )
        offsets = consumer.committed(
            [TopicPartition(settings.topic_retrain_requests, p) for p in partitions], timeout=10
        )
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def test_a_drifted_stream_yields_a_challenger_that_beats_the_pre_drift_champion(drifted, tmp_path, kafka_bootstrap):
    both = {"onnx": "gradient_boosting", "river": "logistic_regression"}  # the spec names two: the gate picks one
    settings, spec, uri, stream, onset = _setup(drifted, tmp_path, kafka_bootstrap, candidates=both)
    pre = stream[:PRE]
    champion = _champion(spec, uri, [r for _, r, _ in pre], [label for _, _, label in pre])
    current = {name: [r[name] for _, r, _ in stream[-300:]] for name in spec.model_inputs}
    _request(kafka_bootstrap, settings, spec, "req-drift", onset, champion, current_rows=current)

    audits = _audits_until_decided(settings, kafka_bootstrap, uri)

    assert [r["action"] for r in audits] == ["started", "registered", "challenger_set"]
    assert all(r["actor"] == "retrain" and r["details"]["request_id"] == "req-drift" for r in audits)
    version = audits[-1]["version"]
    aliases = registry.aliases(spec.model.name, tracking_uri=uri)
    assert aliases == {CHAMPION: champion, CHALLENGER: version}  # champion untouched
    tags = registry.version_tags(spec.model.name, version, tracking_uri=uri)
    assert tags["driftloop.origin"] == "retrain" and tags[REQUEST_TAG] == "req-drift" and tags[GATE_TAG] == "passed"

    client = MlflowClient(uri)
    run = client.get_run(registry.version_info(spec.model.name, version, tracking_uri=uri).run_id)
    params, metrics = run.data.params, run.data.metrics
    post = stream[PRE:]
    window = post[-WINDOW:]
    assert params["request_id"] == "req-drift" and params["reason"] == "concept_drift"
    assert params["train_from"] == contracts.iso_time(onset)
    assert params["window_first_event_time"] == contracts.iso_time(window[0][0].event_time)
    assert params["window_last_event_time"] == contracts.iso_time(window[-1][0].event_time)
    assert (params["rows"], params["train_rows"], params["holdout_rows"]) == (str(WINDOW), "1200", "400")
    assert params["candidates"] == "onnx:gradient_boosting,river:logistic_regression"
    assert params["feature_view"] == feature_view_name(spec)
    assert params["feature_view_version"] == feature_view_version(spec)
    assert params["code_version"].startswith("0.1.0")
    assert params["dataset_fingerprint"] == tags[FINGERPRINT_TAG] and len(tags[FINGERPRINT_TAG]) == 64
    assert params["champion_version"] == str(champion)
    assert metrics["rows_from_feast"] == WINDOW and metrics["rows_from_labeled"] == 0
    assert metrics["feast_mismatches"] == 0
    for model in ("onnx_gradient_boosting", "river_logistic_regression", "champion"):
        assert {f"{model}.accuracy", f"{model}.roc_auc", f"{model}.log_loss"} <= set(metrics)
    winner = params["winner"]
    assert metrics[f"{winner}.roc_auc"] > metrics["champion.roc_auc"]
    assert 0 <= metrics["data_drift_share"] <= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"drift_report.json", "data_drift.html"} <= artifacts
    report = json.loads(
        Path(client.download_artifacts(run.info.run_id, "drift_report.json", str(tmp_path))).read_text()
    )
    assert report["kind"] == "concept"
    html = Path(client.download_artifacts(run.info.run_id, "data_drift.html", str(tmp_path))).read_text()
    assert "Dataset Drift" in html and "amount_sum_1h" in html

    # The registered challenger really is better on the newest post-drift events than the old champion.
    holdout = window[-400:]
    rows, labels = [r for _, r, _ in holdout], [label for _, _, label in holdout]
    challenger = registry.load_version(spec.model.name, version, tracking_uri=uri).model
    old = registry.load_version(spec.model.name, champion, tracking_uri=uri).model
    ours = roc_auc(zip(map(bool, labels), challenger.predict_proba(rows)))
    theirs = roc_auc(zip(map(bool, labels), old.predict_proba(rows)))
    assert ours == pytest.approx(metrics[f"{winner}.roc_auc"]) and ours > theirs + 0.2
    assert np.mean(labels) > 0.02  # the holdout holds frauds to rank


def test_a_warm_up_request_replaces_the_placeholder_with_the_specs_own_model(drifted, tmp_path, kafka_bootstrap):
    settings, spec, uri, stream, onset = _setup(drifted, tmp_path, kafka_bootstrap)
    placeholder = ensure_champion(spec, uri).version  # the demo spec is ONNX: a River placeholder serves first
    assert PLACEHOLDER_TAG in registry.version_tags(spec.model.name, placeholder, tracking_uri=uri)
    _request(kafka_bootstrap, settings, spec, "req-warmup", stream[0][0].event_time, placeholder, reason="warmup")

    audits = _audits_until_decided(settings, kafka_bootstrap, uri)

    assert [r["action"] for r in audits] == ["started", "registered", "promoted"]
    version = audits[-1]["version"]
    assert "replaces the warm-up placeholder" in audits[-1]["reason"]
    assert audits[-1]["details"]["to"] == {CHAMPION: version, "previous": placeholder}
    assert registry.aliases(spec.model.name, tracking_uri=uri) == {CHAMPION: version, "previous": placeholder}
    run_id = registry.version_info(spec.model.name, version, tracking_uri=uri).run_id
    params = MlflowClient(uri).get_run(run_id).data.params
    assert params["candidates"] == "onnx:gradient_boosting"  # the spec's own model only, not compared
    assert "warm-up placeholder, not compared" in params["gate"]
    assert registry.load_version(spec.model.name, version, tracking_uri=uri).model.flavor == "onnx"


def test_a_candidate_that_cannot_beat_the_champion_is_registered_rejected_without_alias(
    drifted, tmp_path, kafka_bootstrap
):
    settings, spec, uri, stream, onset = _setup(
        drifted, tmp_path, kafka_bootstrap, window_events=800, min_improvement=0.3
    )
    post = stream[PRE:]  # the champion already knows the new regime, holdout included
    champion = _champion(spec, uri, [r for _, r, _ in post], [label for _, _, label in post])
    _request(kafka_bootstrap, settings, spec, "req-same", onset, champion)

    audits = _audits_until_decided(settings, kafka_bootstrap, uri)

    assert [r["action"] for r in audits] == ["started", "registered", "rejected"]
    version, reason = audits[-1]["version"], audits[-1]["reason"]
    assert reason.startswith("roc_auc ") and f"<= champion v{champion} " in reason and reason.endswith(" + 0.3000")
    assert registry.aliases(spec.model.name, tracking_uri=uri) == {CHAMPION: champion}
    tags = registry.version_tags(spec.model.name, version, tracking_uri=uri)
    assert tags[REJECTED_TAG] == reason and tags[GATE_TAG] == "rejected" and tags[REQUEST_TAG] == "req-same"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_delays_the_request_which_then_completes_once(drifted, tmp_path, kafka_bootstrap, caplog):
    settings, spec, uri, stream, onset = _setup(drifted, tmp_path, kafka_bootstrap, window_events=800)
    _request(kafka_bootstrap, settings, spec, "req-retry", onset, None)
    caplog.set_level(logging.WARNING, logger="driftloop.retrain.worker")

    # First MLflow is a port where nothing listens: the worker keeps the request and retries it.
    dead = Worker(settings, kafka_bootstrap, f"http://127.0.0.1:{_free_port()}", max_backoff_seconds=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum("unreachable" in r.message for r in caplog.records) < 3:
        time.sleep(0.2)
    dead.close()
    retries = [r.message for r in caplog.records if "unreachable" in r.message]
    assert len(retries) >= 3 and all("request req-retry" in m for m in retries)
    assert _committed(kafka_bootstrap, settings, spec) == 0  # not decided, so not committed

    # Then a working MLflow: the request (never lost) completes, and is committed once.
    worker = Worker(settings, kafka_bootstrap, uri)
    try:
        audits = _audits(kafka_bootstrap, settings.topic_audit, _decided)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _committed(kafka_bootstrap, settings, spec) == 0:
            time.sleep(0.2)
    finally:
        worker.close()
    assert [r["action"] for r in audits] == ["started", "registered", "challenger_set"]
    assert _committed(kafka_bootstrap, settings, spec) == 1
    versions = registry.versions_tagged(spec.model.name, REQUEST_TAG, "req-retry", tracking_uri=uri)
    assert versions == [audits[-1]["version"]]
    assert "there is no champion" in audits[-1]["reason"]


def test_a_request_without_enough_data_waits_then_fails_without_touching_aliases(drifted, tmp_path, kafka_bootstrap):
    settings, spec, uri, stream, onset = _setup(drifted, tmp_path, kafka_bootstrap)
    pre = stream[:PRE]
    champion = _champion(spec, uri, [r for _, r, _ in pre[:500]], [label for _, _, label in pre[:500]])
    last = stream[-100][0].event_time  # 100 labelled rows since, 400 needed
    # the second request queues behind the first while that one waits: it must not be lost meanwhile
    for request_id in ("req-early", "req-queued"):
        _request(kafka_bootstrap, settings, spec, request_id, last, champion)

    worker = Worker(settings, kafka_bootstrap, uri, data_retry_seconds=0.5, max_data_wait_seconds=2)
    try:
        audits = _audits(
            kafka_bootstrap,
            settings.topic_audit,
            lambda records: sum(r["action"] == "retrain_failed" for r in records) == 2,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _committed(kafka_bootstrap, settings, spec) < 2:
            time.sleep(0.2)
    finally:
        worker.close()
    assert [(r["details"]["request_id"], r["action"]) for r in audits] == [
        (request_id, action)
        for request_id in ("req-early", "req-queued")
        for action in ("started", "waiting_for_data", "retrain_failed")
    ]
    assert audits[1]["details"] == {"request_id": "req-early", "rows": 100, "min_rows": 400}
    assert audits[2]["reason"].startswith(
        "DriftloopError: not enough labelled data after waiting 2s: 100 labelled rows"
    )
    assert registry.aliases(spec.model.name, tracking_uri=uri) == {CHAMPION: champion}
    assert registry.versions_tagged(spec.model.name, REQUEST_TAG, "req-early", tracking_uri=uri) == []
    assert _committed(kafka_bootstrap, settings, spec) == 2  # failed for good: done, not replayed


def test_the_champion_is_judged_by_the_scores_it_served(drifted, tmp_path, kafka_bootstrap):
    """A champion that learned online is compared as it served, not as its registered snapshot."""
    settings, spec, uri, stream, onset = _setup(drifted, tmp_path, kafka_bootstrap, window_events=800)
    snapshot = _champion(spec, uri, [], [])  # registered untrained: its snapshot alone would lose the gate
    settings = settings.replace(topic_labeled=f"labeled-{uuid.uuid4().hex[:8]}")
    kafka.ensure_topics(kafka_bootstrap, [settings.topic_labeled], settings.partitions)
    # ...but live, after its online learning, it ranked every event right
    publish(
        kafka_bootstrap,
        settings.topic_labeled,
        [
            (e.entity, labeled_record(spec, e, r, label, model_version=snapshot, score=0.9 if label else 0.1))
            for e, r, label in stream
        ],
    )
    _request(kafka_bootstrap, settings, spec, "req-served", onset, snapshot)

    audits = _audits_until_decided(settings, kafka_bootstrap, uri)

    assert [r["action"] for r in audits] == ["started", "registered", "rejected"]
    assert f"<= champion v{snapshot} 1.0000" in audits[-1]["reason"]


def test_a_forged_champion_is_never_loaded_and_a_warm_up_request_cannot_use_it_to_skip_the_comparison(
    drifted, tmp_path, kafka_bootstrap
):
    settings, spec, uri, stream, onset = _setup(drifted, tmp_path, kafka_bootstrap)
    pre = stream[:PRE]
    served = _champion(spec, uri, [r for _, r, _ in pre], [label for _, _, label in pre])
    marker = tmp_path / "the-command-ran"
    forged = _forged_placeholder(spec, uri, tmp_path / "forged", marker)
    registry.set_alias(spec.model.name, "previous", served, tracking_uri=uri)
    registry.set_alias(spec.model.name, CHAMPION, forged, tracking_uri=uri)
    _request(kafka_bootstrap, settings, spec, "req-forged", onset, forged, reason="warmup")

    audits = _audits_until_decided(settings, kafka_bootstrap, uri)

    assert not marker.exists()
    assert [r["action"] for r in audits] == ["started", "model_refused", "registered", "challenger_set"]
    assert audits[1]["version"] == forged and audits[1]["details"]["serving"] == served
    assert audits[2]["details"]["champion_version"] == served  # compared with what the workers serve instead
    assert registry.aliases(spec.model.name, tracking_uri=uri)[CHAMPION] == forged  # no promotion past it


def _forged_placeholder(spec, uri, directory, marker) -> int:
    """A version registered without the key, claiming (by tag) to be the warm-up placeholder; its model.pkl
    runs a command when unpickled, and its checksum tag matches it."""
    from driftloop.models.checksum import directory_checksum
    from tests.support.trust import RunsACommand

    model_dir = directory / "artifacts" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.pkl").write_bytes(pickle.dumps(RunsACommand(marker)))
    tags = {
        "driftloop.checksum": directory_checksum(model_dir),
        "driftloop.flavor": "river",
        "driftloop.placeholder": "warmup",
    }
    return int(
        MlflowClient(uri, registry_uri=uri)
        .create_model_version(spec.model.name, source=str(directory), tags=tags)
        .version
    )
