"""A spec `check-spec` accepts must start: edge-case names that pass the validator go through what
`driftloop up` and a retraining do with them, on the real components (Feast apply, writes and reads on
both online stores, Feast's own historical retrieval, the Kafka topics derived from the name, the
MLflow registry, ONNX and River training)."""

from __future__ import annotations

import copy
import random
import shutil

import pytest
import yaml

from driftloop import kafka
from driftloop.features.feast.offline import OfflineHistory
from driftloop.features.feast.repo import apply
from driftloop.models import registry
from driftloop.models.flavors import new_model
from driftloop.retrain.train import train_candidates
from driftloop.settings import DEMO_SPEC
from driftloop.spec import MAX_NAME_LENGTH, PipelineSpec, load_spec
from driftloop.streams.control.app import build_app
from driftloop.streams.topology import Topology
from tests.support.feast import START, feast_answers, feast_settings, random_row, write_files


def _longest(document: dict) -> dict:
    """The longest pipeline name, starting with a digit; a model name MLflow takes but few would type."""
    return {
        **document,
        "name": "1" + "n" * (MAX_NAME_LENGTH - 1),
        "model": {**document["model"], "name": "Fraud model (v2) é #1 & co"},
    }


def _reserved_looking(document: dict) -> dict:
    """Names that sound reserved and are not: the entity `created`, inputs `select`, `_x` and
    `output_label`, the event time in `event_timestamp` (not a Feast column), an empty category."""
    renames = {
        "user_id": "created",
        "amount": "select",
        "account_age_days": "_x",
        "channel": "output_label",
        "event_time": "event_timestamp",
    }
    events = document["events"]
    events["fields"] = {renames.get(name, name): field for name, field in events["fields"].items()}
    for key in ("entity", "time_field"):
        events[key] = renames.get(events[key], events[key])
    for feature in document["features"]:
        if "field" in feature:
            feature["field"] = renames.get(feature["field"], feature["field"])
    events["fields"]["output_label"]["values"] = ["", "pos", "Unseen"]
    return {**document, "name": "Fraud_", "model": {**document["model"], "name": "x.y-z"}}


def _spec(tmp_path, edit) -> tuple[PipelineSpec, object]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(edit(copy.deepcopy(yaml.safe_load(DEMO_SPEC.read_text()))), allow_unicode=True))
    return load_spec(path), path  # what check-spec does


EDGE_CASES = [pytest.param(_longest, id="longest-name"), pytest.param(_reserved_looking, id="reserved-looking")]


@pytest.mark.parametrize("edit", EDGE_CASES)
@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_feast_takes_every_name_the_spec_accepts(tmp_path, request, edit, online_store):
    if online_store == "redis":
        request.getfixturevalue("redis_url")  # skips without Redis
    spec, path = _spec(tmp_path, edit)
    settings = feast_settings(tmp_path, path, DRIFTLOOP_ONLINE_STORE=online_store)
    apply(settings, spec)
    rng = random.Random(1)
    rows = [random_row(spec, rng, f"e-{i % 3}", START + i) for i in range(30)]
    write_files(settings, spec, rows, per_file=10)
    asked = [("e-0", round((START + 29) * 1e6)), ("e-1", round((START + 28) * 1e6))]
    answers = OfflineHistory(settings, spec).features(asked)
    assert answers == [{name: rows[i][name] for name in spec.model_inputs} for i in (27, 28)]
    assert feast_answers(settings, spec, asked) == answers  # Feast's own retrieval takes the names too


@pytest.mark.parametrize("edit", EDGE_CASES)
def test_kafka_takes_every_topic_and_group_derived_from_the_name(tmp_path, kafka_bootstrap, edit):
    spec, path = _spec(tmp_path, edit)
    settings = feast_settings(tmp_path, path, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    topology = Topology.of(settings, spec)
    leader = build_app(settings, spec, kafka_bootstrap, "http://127.0.0.1:1")._leader_assignor._leader_topic_name
    names = [*topology.internal, topology.entity_changelog, topology.join_changelog, leader]
    assert max(map(len, names)) <= 249
    kafka.ensure_topics(kafka_bootstrap, names, 1)
    consumer = kafka.consumer(kafka_bootstrap, f"{topology.group}-retrain")
    try:
        consumer.subscribe([leader])
        consumer.poll(1.0)
    finally:
        consumer.close()


@pytest.mark.parametrize("edit", EDGE_CASES)
def test_mlflow_and_the_model_exporters_take_the_names(tmp_path, empty_mlflow_db, edit):  # noqa: F811
    spec, _ = _spec(tmp_path, edit)
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rng = random.Random(2)
    rows = [{name: random_row(spec, rng, "e", START)[name] for name in spec.model_inputs} for _ in range(60)]
    labels = [i % 2 for i in range(60)]
    candidates = train_candidates(spec, rows, labels)  # the spec's own model: ONNX gradient boosting
    assert [(c.name, len(c.model.predict_proba(rows))) for c in candidates] == [("onnx_gradient_boosting", 60)]
    river_spec = spec.model_copy(
        update={"model": spec.model.model_copy(update={"flavor": "river", "estimator": "logistic_regression"})}
    )
    info = registry.register(
        new_model(river_spec), river_spec, tracking_uri=uri, reference_rows=rows, tags={"driftloop.request_id": "r-1"}
    )
    registry.set_alias(spec.model.name, "champion", info.version, tracking_uri=uri)
    assert registry.aliases(spec.model.name, tracking_uri=uri) == {"champion": info.version}
    assert registry.versions_tagged(spec.model.name, "driftloop.request_id", "r-1", tracking_uri=uri) == [info.version]
    assert registry.load_version(spec.model.name, info.version, tracking_uri=uri).version == info.version


def test_what_the_spec_refuses_feast_would_refuse_at_start(tmp_path):
    """The rule on `name` is Feast's own: past the validator, a hyphen fails `feast apply` on SQLite."""
    spec, path = _spec(tmp_path, lambda document: document)
    hyphenated = spec.model_copy(update={"name": "fraud-v2"})
    with pytest.raises(Exception, match="Project names for SQLite online stores cannot contain hyphens"):
        apply(feast_settings(tmp_path, path), hyphenated)
