"""The replay's "never retrained" baseline against a real broker and a real (SQLite) MLflow registry: the champion
of the replay's start, brought to where the workers had it, scored prequentially on this run's labeled rows."""

import json
import time

import numpy as np
import pytest

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.load.never_retrained import NeverRetrained
from driftloop.load.replay import ReplayReport
from driftloop.models.bootstrap import ensure_champion, placeholder_spec
from driftloop.models.flavors import new_model
from driftloop.models.registry import ensure_experiment
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec
from driftloop.streams.contracts import iso_time
from tests.support import key_environ
from tests.support.pipeline import empty_registry


def _row(index: int) -> dict:
    """A demo-spec input row whose label is simply `amount > 500`: easy to learn, impossible to guess cold."""
    amount = 900.0 + index % 7 if index % 3 == 0 else 20.0 + index % 11
    return {
        "txn_count_10m": 1.0,
        "amount_sum_1h": amount,
        "amount_max_24h": amount,
        "amount_mean_24h": amount,
        "amount_ratio_to_mean_24h": 1.0,
        "secs_since_last_txn": 60.0,
        "amount": amount,
        "merchant_category": "grocery",
        "country": "NL",
        "channel": "pos",
        "card_present": True,
        "account_age_days": 400,
    }


def _labeled(event_id: str, index: int, decision: int) -> bytes:
    row = _row(index)
    return json.dumps(
        {
            "contract": 1,
            "event_id": event_id,
            "entity": "u-1",
            "event_time": iso_time(1.7e9 + index),
            "score": float(decision),
            "decision": decision,
            "label": int(row["amount"] > 500),
            "model_name": "card_fraud",
            "model_version": 1,
            "variant": "champion",
            "features": row,
            "outcome_time": iso_time(1.7e9 + index),
            "predicted_at": iso_time(time.time()),
            "joined_at": iso_time(time.time()),
        }
    ).encode()


@pytest.fixture(scope="module")
def champion_registry(tmp_path_factory):
    """A SQLite registry holding the cold-start River placeholder champion, as a fresh stack registers (created
    once: the registry's migrations take seconds)."""
    spec = load_spec(DEMO_SPEC)
    directory = tmp_path_factory.mktemp("registry")
    empty_registry(directory / "mlflow.db")
    uri = f"sqlite:///{directory}/mlflow.db"
    ensure_experiment(spec.name, tracking_uri=uri, artifact_location=str(directory / "artifacts"))
    ensure_champion(spec, uri)
    return spec, uri


def test_the_starting_champion_catches_up_then_learns_this_runs_rows_in_row_order(
    kafka_bootstrap, unique, tmp_path, champion_registry
):
    spec, uri = champion_registry
    topic = f"nr-labeled-{unique}"
    settings = settings_module.load(
        environ={
            "MLFLOW_TRACKING_URI": uri,
            "DRIFTLOOP_DATA_DIR": str(tmp_path / "data"),
            "DRIFTLOOP_TOPIC_LABELED": topic,
            **key_environ(),
        }
    )
    kafka.ensure_topics(kafka_bootstrap, [topic], partitions=2)
    producer = kafka.producer(kafka_bootstrap)
    time.sleep(0.5)  # room between the registration and the replay's start for the history below
    baseline = NeverRetrained.at_start(settings, spec)
    created = baseline.champion.created_ms
    # Before the replay: one record joined before the version existed (not learned), 400 joined after (learned
    # online by the workers, so the baseline catches up on them).
    producer.produce(topic, _labeled("old-0", 1, 0), key=b"u-1", timestamp=created - 5_000)
    for index in range(400):
        producer.produce(topic, _labeled(f"hist-{index}", index, 0), key=b"u-1", timestamp=created + 1 + index)
    # The run: 60 rows, arriving in reverse order, each answered wrongly by the live pipeline; row 5 twice
    # (a re-emitted prediction: the first one counts), and another run's record after the start.
    run_ids = [f"run-{row}" for row in range(60)]
    for row in reversed(range(60)):
        label = int(_row(1000 + row)["amount"] > 500)
        producer.produce(topic, _labeled(run_ids[row], 1000 + row, 1 - label), key=b"u-1")
    producer.produce(topic, _labeled(run_ids[5], 1005, int(_row(1005)["amount"] > 500)), key=b"u-1")
    producer.produce(topic, _labeled("other-run-1", 7, 0), key=b"u-1")
    assert producer.flush(10) == 0

    figures = baseline.score(
        kafka_bootstrap,
        topic,
        {event_id: row for row, event_id in enumerate(run_ids)},
        expected=60,
        delay_rows=3,
        timeout=5,
    )

    assert figures["model_version"] == 1 and figures["flavor"] == "river"
    assert figures["caught_up_rows"] == 400 and figures["rows"] == 60
    assert figures["live_accuracy"] == 0.0 and figures["live_model_versions"] == [1]
    # The same model, taught the same way by hand: history first, then each row predicted, learned 3 rows later.
    model = new_model(placeholder_spec(spec))  # what ensure_champion registered for the demo's ONNX spec
    model.learn([_row(index) for index in range(400)], [int(_row(index)["amount"] > 500) for index in range(400)])
    rows = [_row(1000 + row) for row in range(60)]
    labels = [int(row["amount"] > 500) for row in rows]
    decisions = []
    for i, row in enumerate(rows):
        decisions.append(int(model.predict_proba([row])[0] >= spec.model.threshold))
        if i >= 3:
            model.learn([rows[i - 3]], [labels[i - 3]])
    assert figures["accuracy"] == pytest.approx(np.mean(np.array(decisions) == labels))
    assert figures["accuracy"] > 0.9  # caught up: it knows the rule from the first row on


def test_without_a_champion_the_baseline_says_why(tmp_path, champion_registry):
    spec, uri = champion_registry
    unregistered = spec.model_copy(update={"model": spec.model.model_copy(update={"name": "nobody"})})
    settings = settings_module.load(
        environ={"MLFLOW_TRACKING_URI": uri, "DRIFTLOOP_DATA_DIR": str(tmp_path), **key_environ()}
    )
    figures = NeverRetrained.at_start(settings, unregistered).score("127.0.0.1:1", "labeled", {}, 0, 0, 1)
    assert figures == {"model_version": None, "problem": f"model 'nobody' has no champion in {uri}"}
    nowhere = settings_module.load(environ={"DRIFTLOOP_DATA_DIR": str(tmp_path)})
    assert "no MLflow tracking URI" in NeverRetrained.at_start(nowhere, spec).problem


def test_the_replay_report_shows_the_baseline_beside_the_live_accuracy():
    report = ReplayReport(
        run_id="r",
        table="t.csv",
        spec="card_fraud",
        rows=2,
        produced_events=2,
        produced_outcomes=2,
        produce_seconds=1.0,
        rows_per_s=2.0,
        predictions_per_s=2.0,
        predicted=2,
        dead_lettered=0,
        missing=0,
        duplicate_predictions=0,
        dead_letter_reasons={},
        metrics={
            "accuracy": 0.5,
            "precision": 0,
            "recall": 0,
            "f1": 0,
            "log_loss": 1,
            "roc_auc": None,
            "baselines": {"majority_class": 0.5, "previous_label": 0.5},
            "deciles": [],
            "model_versions": [],
        },
        never_retrained={
            "model_version": 3,
            "flavor": "river",
            "learning": "online, each row learned 0 rows after it was predicted",
            "caught_up_rows": 0,
            "rows": 2,
            "accuracy": 1.0,
            "live_accuracy": 0.5,
            "live_model_versions": [3, 4],
        },
    )
    assert (
        "never retrained: champion v3 as the replay started (river, learning online, each row learned 0 rows "
        "after it was predicted): accuracy 1.0000 on 2 labeled rows, where the live pipeline had 0.5000"
    ) in report.render()
    assert report.as_dict()["never_retrained"]["accuracy"] == 1.0
