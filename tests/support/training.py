"""Shared test helpers: training."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.features.feast.writer import FeastWriter
from driftloop.features.rows import Featuriser
from driftloop.load.generator import DriftPlan, FraudStream, encode
from driftloop.settings import DEMO_SPEC
from driftloop.spec import PipelineSpec
from driftloop.streams.contracts import iso_time
from driftloop.streams.worker.validation import Event
from tests.support import key_environ

START = datetime.now(UTC) - timedelta(hours=2)


def write_spec(path: Path, name: str, model_name: str | None = None, **retrain) -> Path:
    """The demo spec under its own name (own Feast project; the registered model is `model_name`, else the
    same name), its retrain section overridden."""
    document = yaml.safe_load(DEMO_SPEC.read_text())
    document["name"] = name
    document["model"]["name"] = model_name or name
    document["retrain"] = retrain
    path.write_text(yaml.safe_dump(document))
    return path


def training_settings(
    directory: Path, bootstrap: str, suffix: str, spec_path: Path, **env: str
) -> settings_module.Settings:
    return settings_module.load(
        environ={
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DRIFTLOOP_DATA_DIR": str(directory / "data"),
            "DRIFTLOOP_FEAST_REPO": str(directory / "feature_repo"),
            "DRIFTLOOP_SPEC": str(spec_path),
            "DRIFTLOOP_PARTITIONS": "2",
            **key_environ(),
            **{
                f"DRIFTLOOP_TOPIC_{name.upper()}": f"{name}-{suffix}"
                for name in ("labeled", "audit", "retrain_requests")
            },
            **env,
        }
    )


def scored_stream(
    spec: PipelineSpec, count: int, *, seed: int, onset: int | None = None, fraud_rate: float = 0.05
) -> list[tuple[Event, dict, int]]:
    """(event, the row the scorer would score, label) per event, computed as streams/worker/scoring.py does."""
    plan = DriftPlan("none", 0) if onset is None else DriftPlan("abrupt", onset)
    stream = FraudStream(
        seed=seed,
        users=300,
        fraud_rate=fraud_rate,
        drift=plan,
        start=START,
        events_per_second=20,
        id_prefix=f"s{seed}-",
    )
    featuriser, out = Featuriser(spec), []
    for raw, outcome in stream.take(count):
        event, row = featuriser.featurise(encode(raw))
        assert isinstance(event, Event), event
        out.append((event, row, outcome["is_fraud"]))
    return out


def feast_row(spec: PipelineSpec, event: Event, row: dict) -> dict:
    return {spec.events.entity: event.entity, "event_timestamp": event.event_time, **row}


def labeled_record(spec: PipelineSpec, event: Event, row: dict, label: int, **extra) -> bytes:
    """A `labeled` record as streams/worker/join.py writes it."""
    return json.dumps(
        {
            "contract": 1,
            "event_id": event.event_id,
            "entity": event.entity,
            "event_time": iso_time(event.event_time),
            "score": 0.5,
            "decision": 1,
            "label": label,
            "model_name": spec.model.name,
            "model_version": 1,
            "variant": "champion",
            "features": row,
            "outcome_time": iso_time(event.event_time + 60),
            "predicted_at": iso_time(event.event_time),
            "joined_at": iso_time(event.event_time + 60),
            **extra,
        }
    ).encode()


def publish(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = kafka.producer(bootstrap)
    for key, value in records:
        producer.produce(topic, key=key.encode(), value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def write_feast(writer: FeastWriter, rows: list[dict], batch: int) -> None:
    for start in range(0, len(rows), batch):
        writer.write(rows[start : start + batch])
