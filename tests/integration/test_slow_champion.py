"""A champion that turns slow: its breaker opens, the previous version serves as `fallback`, and the breaker
closes once the champion is fast again. A real worker on a real broker and registry."""

from __future__ import annotations

import json
import threading
import time

import yaml

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.load.benchmarks.slow_model import stalling_model
from driftloop.load.generator import encode
from driftloop.models.checks import labelled_rows
from driftloop.models.flavors import train
from driftloop.models.registry import register, set_alias
from driftloop.signing import key_path, load_key
from driftloop.spec import load_spec
from driftloop.streams import contracts
from driftloop.streams.topology import Topology
from tests.support import SPECS
from tests.support.pipeline import RunningWorker, consume_all, pipeline_environ

SLO = {"p99_ms": 200, "breaker": {"max_call_ms": 40, "failures": 2, "open_for": "2s", "probe_events": 5}}


def _produce_until(bootstrap: str, topic: str, stop: threading.Event, sent: list[str]) -> None:
    producer = kafka.producer(bootstrap)
    i = 0
    while not stop.is_set():
        event_id, user = f"b-{i}", f"u-{i % 40}"
        doc = {
            "event_id": event_id,
            "user_id": user,
            "event_time": time.time(),
            "amount": 20.0 + i % 700,
            "merchant_category": "grocery",
            "country": "NL",
            "channel": "pos",
            "card_present": True,
            "account_age_days": 400,
        }
        producer.produce(topic, encode(doc), user.encode())
        producer.poll(0)
        sent.append(event_id)
        i += 1
        time.sleep(0.01)
    producer.flush(10)


def _audited(records, action: str) -> bool:
    return action in [json.loads(m.value())["action"] for m in next(iter(records.values()))]


def test_a_slow_champion_is_served_by_the_previous_version_until_it_recovers(kafka_bootstrap, unique, tmp_path):
    document = yaml.safe_load((SPECS / "fraud.yaml").read_text())
    document["model"].update(flavor="river", estimator="logistic_regression")
    document["slo"] = SLO
    spec_file = tmp_path / "slo.yaml"
    spec_file.write_text(yaml.safe_dump(document))
    settings = settings_module.load(environ=pipeline_environ(tmp_path, kafka_bootstrap, unique, spec_file=spec_file))
    spec = load_spec(settings.spec)
    tracking_uri = settings.mlflow_tracking_uri
    rows, labels = labelled_rows(spec, 300)
    v1 = register(train(spec, rows, labels), spec, tracking_uri=tracking_uri, reference_rows=rows)
    set_alias(spec.model.name, "champion", v1.version, tracking_uri=tracking_uri)
    topology = Topology.of(settings, spec)

    worker = RunningWorker(settings)
    stop, sent = threading.Event(), []
    producer = threading.Thread(target=_produce_until, args=(kafka_bootstrap, topology.events, stop, sent))
    producer.start()
    try:
        time.sleep(1)  # v1 serves as champion first
        switch = tmp_path / "slow"
        switch.touch()
        v2 = register(
            stalling_model(spec, rows, labels, switch, delay=0.05), spec, tracking_uri=tracking_uri, reference_rows=rows
        )
        set_alias(spec.model.name, "previous", v1.version, tracking_uri=tracking_uri)
        set_alias(spec.model.name, "champion", v2.version, tracking_uri=tracking_uri)
        consume_all(kafka_bootstrap, [settings.topic_audit], lambda r: _audited(r, "breaker_opened"), timeout=30)
        time.sleep(1)  # the fallback serves a while
        switch.unlink()  # v2 recovers
        audit = consume_all(
            kafka_bootstrap, [settings.topic_audit], lambda r: _audited(r, "breaker_closed"), timeout=20
        )
        time.sleep(1)  # v2 serves as champion again for a while
    finally:
        stop.set()
        producer.join(15)
    predictions = consume_all(
        kafka_bootstrap, [topology.predictions], lambda r: len(r[topology.predictions]) >= len(sent), timeout=30
    )[topology.predictions]
    metrics = worker.metrics()
    worker.close()

    key = load_key(key_path(settings))
    records = [m for m in audit[settings.topic_audit] if json.loads(m.value())["action"].startswith("breaker_")]
    assert all(contracts.signed_by(key, settings.topic_audit, m.value(), m.headers()) for m in records)
    actions = [(json.loads(m.value())["action"], json.loads(m.value())["version"]) for m in records]
    assert actions == [("breaker_opened", v2.version), ("breaker_closed", v2.version)]
    opened = json.loads(records[0].value())
    assert f"v{v2.version} failed 2 scoring calls (last: " in opened["reason"]
    assert opened["actor"] == "worker"

    served = [json.loads(m.value()) for m in predictions]
    assert sorted(p["event_id"] for p in served) == sorted(sent)  # every event predicted once
    by_variant = {(p["variant"], p["model_version"]) for p in served}
    assert ("fallback", v1.version) in by_variant
    assert ("champion", v2.version) in by_variant
    last = max(served, key=lambda p: p["event_time"])
    assert (last["variant"], last["model_version"]) == ("champion", v2.version)  # closed again
    assert metrics[("driftloop_breaker_changes_total", (("action", "breaker_opened"),))] == 1
    assert metrics[("driftloop_predictions_total", (("model_version", str(v1.version)), ("variant", "fallback")))] > 0
