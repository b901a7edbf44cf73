"""The model layer: what is particular to the River and ONNX flavors (what every flavor does is the contract
suite, tests/unit/test_flavors.py), the MLflow registry (real SQLite-backed MLflow) and bootstrap."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from driftloop.errors import DriftloopError
from driftloop.models import registry
from driftloop.models.bootstrap import CHAMPION, ORIGIN_TAG, PLACEHOLDER_TAG, ensure_champion
from driftloop.models.checks import labelled_rows
from driftloop.models.flavors import FLAVORS, Model, load, new_model, retrain_candidates, train
from driftloop.models.inputs import frame_to_rows, rows_to_frame
from driftloop.models.onnx_flavor import OnnxModel, _frame
from driftloop.models.river_flavor import RiverModel
from driftloop.schema import model_inputs
from driftloop.spec import UNSEEN
from tests.support.models import DEMO, LABELS, ROWS, TRAIN, TRAIN_Y, model_spec

TEST, TEST_Y = ROWS[2000:], np.array(LABELS[2000:])
MAJORITY_ACCURACY = max(TEST_Y.mean(), 1 - TEST_Y.mean())
STREAM = labelled_rows(DEMO, 12000, seed=1)  # a longer labelled stream for the online learners
# every estimator of every flavor exported to ONNX from scikit-learn (the onnx flavor and its subclasses)
SKLEARN_TO_ONNX = [
    (flavor.flavor, estimator)
    for flavor in FLAVORS.values()
    if issubclass(flavor, OnnxModel)
    for estimator in flavor.estimators
]


def accuracy(model: Model, rows=TEST, labels=TEST_Y) -> float:
    return float(np.mean((model.predict_proba(rows) > 0.5) == labels))


def auc(model: Model, rows=TEST, labels=TEST_Y) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, model.predict_proba(rows)))


def odd_rows() -> list[dict]:
    """Unseen categories and a missing optional field, as the validation stage hands them over."""
    rows = [dict(r) for r in TEST[:20]]
    for i, row in enumerate(rows):
        row["account_age_days"] = None
        if i % 2:
            row.update(merchant_category=UNSEEN, country=UNSEEN, channel=UNSEEN)
    return rows


# --- flavors ---------------------------------------------------------------------------------------------


def test_synthetic_data_is_learnable_but_not_trivial():
    assert 0.15 < np.mean(LABELS) < 0.4
    assert MAJORITY_ACCURACY < 0.85


def test_model_inputs_follow_the_spec():
    kinds = {c.name: c.kind for c in model_inputs(DEMO)}
    assert tuple(kinds) == DEMO.model_inputs
    assert kinds["amount"] == kinds["txn_count_10m"] == kinds["account_age_days"] == "numeric"
    assert kinds["card_present"] == "bool" and kinds["merchant_category"] == "category"
    frame = rows_to_frame(model_inputs(DEMO), odd_rows())
    assert frame_to_rows(model_inputs(DEMO), frame) == odd_rows()


@pytest.mark.parametrize(
    "estimator, params, events",
    [
        ("logistic_regression", {}, 12000),
        ("hoeffding_adaptive_tree", {"seed": 1}, 12000),
        ("adaptive_random_forest", {"seed": 1, "n_models": 5}, 4000),
    ],
)
def test_river_scores_cold_then_learns(estimator, params, events):
    model = new_model(model_spec("river", estimator, params))
    assert isinstance(model, RiverModel)

    # Online learners see each event once: one pass over a stream. A Hoeffding tree needs a few thousand
    # events before its first split, and SGD logistic regression keeps improving well past 2,000.
    model.learn(STREAM[0][:events], STREAM[1][:events])
    assert accuracy(model) > MAJORITY_ACCURACY + 0.08, (accuracy(model), MAJORITY_ACCURACY)
    assert auc(model) > 0.9


@pytest.mark.parametrize("flavor, estimator", SKLEARN_TO_ONNX)
def test_onnx_runtime_matches_sklearn(flavor, estimator):
    params = {"random_state": 0} if estimator != "logistic_regression" else {}
    model = train(model_spec(flavor, estimator, params), TRAIN, TRAIN_Y)
    expected = model.sklearn.predict_proba(_frame(model.columns, TEST + odd_rows()))[:, 1]
    actual = model.predict_proba(TEST + odd_rows())
    assert np.max(np.abs(actual - expected)) < 1e-4
    assert accuracy(model) > MAJORITY_ACCURACY + 0.08 and auc(model) > 0.9


def test_load_finds_the_flavor_by_its_file_and_opens_only_the_one_asked_for(tmp_path):
    river = new_model(DEMO)
    river.learn(TRAIN, TRAIN_Y)
    river.save(tmp_path / "m")
    assert load(tmp_path / "m").flavor == "river"
    with pytest.raises(DriftloopError, match="no saved model of flavor onnx"):
        load(tmp_path / "m", "onnx")  # a version signed as onnx whose directory holds a pickle: never unpickled
    with pytest.raises(DriftloopError, match="no saved model"):
        load(tmp_path)
    with pytest.raises(DriftloopError, match="'tensorflow' is not a model flavor"):
        load(tmp_path / "m", "tensorflow")


def test_a_river_model_saved_before_the_schema_module_still_loads(tmp_path, monkeypatch):
    """Its pickle names its columns `driftloop.models.inputs.InputColumn` (name, kind, categories)."""
    from dataclasses import dataclass

    from driftloop.models import inputs

    @dataclass(frozen=True)
    class InputColumn:
        name: str
        kind: str
        categories: tuple[str, ...] = ()

    InputColumn.__module__, InputColumn.__qualname__ = "driftloop.models.inputs", "InputColumn"
    model = train(DEMO, TRAIN, TRAIN_Y)
    old = RiverModel(
        [InputColumn(c.name, c.kind, c.categories) for c in model.columns], model.pipeline, model.estimator
    )
    with monkeypatch.context() as patch:
        patch.setattr(inputs, "InputColumn", InputColumn)
        old.save(tmp_path)
    assert b"InputColumn" in (tmp_path / "model.pkl").read_bytes()
    again = load(tmp_path, "river")
    assert [(c.name, c.kind) for c in again.columns] == [(c.name, c.kind) for c in model.columns]
    np.testing.assert_array_equal(again.predict_proba(TEST), model.predict_proba(TEST))


# --- registry --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
def test_register_then_load_alias_round_trip(flavor, tracking):
    spec = model_spec(flavor, FLAVORS[flavor].estimators[0])
    model = train(spec, TRAIN, TRAIN_Y)
    info = registry.register(
        model,
        spec,
        tracking_uri=tracking,
        reference_rows=TRAIN[:500],
        metrics={"accuracy": accuracy(model)},
        params={"rows": 2000},
        tags={"purpose": "test"},
        run_name="round-trip",
    )
    assert (info.name, info.version) == (spec.model.name, 1) and info.run_id and len(info.checksum) == 64

    assert registry.load_alias(spec.model.name, CHAMPION, tracking_uri=tracking) is None
    assert registry.get_alias_version(spec.model.name, CHAMPION, tracking_uri=tracking) is None
    registry.set_alias(spec.model.name, CHAMPION, info.version, tracking_uri=tracking)
    assert registry.get_alias_version(spec.model.name, CHAMPION, tracking_uri=tracking) == 1

    loaded = registry.load_alias(spec.model.name, CHAMPION, tracking_uri=tracking)
    assert loaded.version == 1 and loaded.checksum == info.checksum and loaded.model.flavor == flavor
    np.testing.assert_array_equal(loaded.model.predict_proba(TEST), model.predict_proba(TEST))
    assert list(loaded.reference.columns) == list(spec.model_inputs) and len(loaded.reference) == 500
    assert frame_to_rows(model_inputs(spec), loaded.reference) == TRAIN[:500]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking, registry_uri=tracking)
    version = client.get_model_version(spec.model.name, "1")
    assert version.tags[registry.CHECKSUM_TAG] == info.checksum and version.tags["purpose"] == "test"
    run = client.get_run(info.run_id)
    assert run.data.metrics["accuracy"] > 0.8 and run.data.params["rows"] == "2000"
    assert client.get_experiment(run.info.experiment_id).name == spec.name
    import mlflow.pyfunc  # what the MLflow UI / `mlflow models serve` see: a pyfunc model with a signature

    pyfunc = mlflow.pyfunc.load_model(f"{client.get_model_version_download_uri(spec.model.name, '1')}")
    assert pyfunc.metadata.signature.inputs.input_names() == list(spec.model_inputs)
    np.testing.assert_allclose(pyfunc.predict(loaded.reference.head(20)), model.predict_proba(TRAIN[:20]))
    uri = client.get_model_version_download_uri(spec.model.name, "1")
    pinned = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    assert {line.split("==")[0] for line in pinned} >= {"driftloop", "mlflow", *FLAVORS[flavor].requirements}

    registry.delete_alias(spec.model.name, CHAMPION, tracking_uri=tracking)
    registry.delete_alias(spec.model.name, CHAMPION, tracking_uri=tracking)  # idempotent
    assert registry.load_alias(spec.model.name, CHAMPION, tracking_uri=tracking) is None


def test_unknown_model_has_no_alias(tracking):
    assert registry.get_alias_version("no_such_model", CHAMPION, tracking_uri=tracking) is None
    assert registry.load_alias("no_such_model", CHAMPION, tracking_uri=tracking) is None


@pytest.mark.parametrize("flavor", FLAVORS)
def test_tampered_artifact_is_refused(flavor, tracking, tmp_path):
    spec = model_spec(flavor, FLAVORS[flavor].estimators[0])
    info = ensure_champion(spec, tracking, zip(TRAIN, TRAIN_Y))
    stored = [p for p in (tmp_path / "artifacts").rglob("artifacts/model/*") if p.is_file()]
    assert len(stored) == 1
    data = bytearray(stored[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    stored[0].write_bytes(bytes(data))
    with pytest.raises(DriftloopError, match=rf"model {spec.model.name} v{info.version}: checksum mismatch"):
        registry.load_alias(spec.model.name, CHAMPION, tracking_uri=tracking)


def test_a_tag_edit_breaks_the_signature_and_a_version_from_before_signing_can_be_vouched_for(tracking, tmp_path):
    from driftloop.models.provenance import SIGNATURE_TAG, ModelRefused
    from driftloop.signing import create_key, load_key

    info = ensure_champion(DEMO, tracking, zip(TRAIN, TRAIN_Y))
    registry.set_version_tag(DEMO.model.name, info.version, PLACEHOLDER_TAG, "warmup", tracking_uri=tracking)
    with pytest.raises(ModelRefused, match="bad signature"):  # a tag alone cannot make a champion a placeholder
        registry.load_version(DEMO.model.name, info.version, tracking_uri=tracking)

    old = ensure_champion(model_spec(name="older"), tracking, zip(TRAIN, TRAIN_Y))
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking, registry_uri=tracking).delete_model_version_tag("older", str(old.version), SIGNATURE_TAG)
    with pytest.raises(ModelRefused, match="unsigned"):
        registry.load_version("older", old.version, tracking_uri=tracking)
    registry.sign_version("older", old.version, tracking_uri=tracking)
    assert registry.load_version("older", old.version, tracking_uri=tracking).version == old.version
    create_key(tmp_path / "other.key")
    with pytest.raises(ModelRefused, match="bad signature"):  # signed with another stack's key
        registry.verify_version("older", old.version, tracking_uri=tracking, key=load_key(tmp_path / "other.key"))


def test_register_leaves_the_global_tracking_uri_alone(tracking, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    ensure_champion(DEMO, tracking, None)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
    assert mlflow.get_tracking_uri() == "http://127.0.0.1:9"


# --- bootstrap -------------------------------------------------------------------------------------------


def test_ensure_champion_is_idempotent(tracking):
    first = ensure_champion(DEMO, tracking, zip(TRAIN, TRAIN_Y))
    second = ensure_champion(DEMO, tracking, zip(TRAIN, TRAIN_Y))
    assert second == first and first.version == 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking, registry_uri=tracking)
    assert len(client.search_model_versions(f"name='{DEMO.model.name}'")) == 1
    assert client.get_model_version(DEMO.model.name, "1").tags[ORIGIN_TAG] == "bootstrap"
    champion = registry.load_alias(DEMO.model.name, CHAMPION, tracking_uri=tracking)
    assert auc(champion.model) > 0.85  # warm-started on the 2,000 warmup rows (cold would be 0.5)
    assert len(champion.reference) == len(TRAIN)


def test_ensure_champion_cold_starts_a_river_model(tracking):
    info = ensure_champion(DEMO, tracking, None)
    champion = registry.load_alias(DEMO.model.name, CHAMPION, tracking_uri=tracking)
    assert champion.version == info.version and len(champion.reference) == 0
    assert np.allclose(champion.model.predict_proba(TEST[:10]), 0.5)


def test_ensure_champion_trains_onnx_on_warmup(tracking):
    spec = model_spec("onnx", "gradient_boosting", {"random_state": 0})
    info = ensure_champion(spec, tracking, zip(TRAIN, TRAIN_Y))
    champion = registry.load_alias(spec.model.name, CHAMPION, tracking_uri=tracking)
    assert champion.version == info.version and champion.model.flavor == "onnx"
    assert accuracy(champion.model) > MAJORITY_ACCURACY + 0.08


def test_an_onnx_pipeline_without_warm_up_rows_starts_on_a_river_placeholder(tracking):
    spec = model_spec("onnx", "gradient_boosting")
    info = ensure_champion(spec, tracking, None)
    tags = registry.version_tags(spec.model.name, info.version, tracking_uri=tracking)
    assert tags[ORIGIN_TAG] == "bootstrap" and tags[PLACEHOLDER_TAG] == "warmup"
    loaded = registry.load_alias(spec.model.name, CHAMPION, tracking_uri=tracking)
    assert loaded.model.flavor == "river" and loaded.model.online  # it serves, and learns, until the first model
    assert len(loaded.model.predict_proba(TRAIN[:5])) == 5
    trained = ensure_champion(model_spec("onnx", "gradient_boosting"), tracking, zip(TRAIN, TRAIN_Y))
    assert trained.version == info.version  # a champion exists: replacing it is the warm-up retraining's job


def test_the_spec_chooses_what_serves_before_the_first_model_of_a_batch_flavor(tracking):
    spec = model_spec("onnx", "gradient_boosting")
    chosen = spec.model_copy(
        update={"model": spec.model.model_copy(update={"placeholder": "river:hoeffding_adaptive_tree"})}
    )
    ensure_champion(chosen, tracking, None)
    loaded = registry.load_alias(spec.model.name, CHAMPION, tracking_uri=tracking)
    assert (loaded.model.flavor, loaded.model.estimator) == ("river", "hoeffding_adaptive_tree")
    assert len(loaded.model.predict_proba(TRAIN[:5])) == 5


def test_no_placeholder_means_no_champion_until_the_user_registers_one(tracking):
    spec = model_spec("onnx", "gradient_boosting", name="no_placeholder")
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"placeholder": "none"})})
    with pytest.raises(DriftloopError, match="model.placeholder is none: register a first version"):
        ensure_champion(spec, tracking, None)
    assert registry.get_alias_version(spec.model.name, CHAMPION, tracking_uri=tracking) is None
    assert ensure_champion(spec, tracking, zip(TRAIN, TRAIN_Y)).version == 1  # warm-up rows train the spec's model


@pytest.mark.parametrize(
    "flavor,estimator,candidates,trained",
    [
        ("river", "hoeffding_adaptive_tree", None, [("river", "hoeffding_adaptive_tree")]),  # never an ONNX one
        ("onnx", "random_forest", None, [("onnx", "random_forest")]),
        ("river", "logistic_regression", {"onnx": "gradient_boosting"}, [("onnx", "gradient_boosting")]),
    ],
)
def test_retraining_trains_the_specs_own_model_unless_the_spec_names_candidates(flavor, estimator, candidates, trained):
    spec = model_spec(flavor, estimator)
    spec = spec.model_copy(update={"retrain": spec.retrain.model_copy(update={"candidates": candidates})})
    assert retrain_candidates(spec) == trained


# --- waiting for the registry ----------------------------------------------------------------------------


def test_a_call_is_tried_again_while_mlflow_does_not_answer_then_given_up_on(caplog):
    tries = []

    def ask() -> None:
        tries.append(time.monotonic())
        urllib.request.urlopen("http://127.0.0.1:9/api/2.0/mlflow/registered-models/get?name=m", timeout=1)

    started = time.monotonic()
    with pytest.raises(
        DriftloopError,
        match=r"finding the champion: MLflow at http://127.0.0.1:9 did not answer "
        r"for 2s: <urlopen error \[Errno 111\] Connection refused>",
    ):
        registry.when_reachable(
            ask, tracking_uri="http://127.0.0.1:9", what="finding the champion", stop=threading.Event(), timeout=2
        )
    assert 2 <= time.monotonic() - started < 10
    assert len(tries) >= 3  # 0.5 s, then 1 s between tries
    assert "finding the champion: MLflow at http://127.0.0.1:9 does not answer" in caplog.text


def test_a_failure_while_mlflow_answers_is_the_calls_own(tracking):
    def fail() -> None:
        raise ValueError("no such version")

    started = time.monotonic()
    with pytest.raises(ValueError, match="no such version"):
        registry.when_reachable(fail, tracking_uri=tracking, what="loading", stop=threading.Event())
    assert time.monotonic() - started < 10  # no waiting for an MLflow that answers
