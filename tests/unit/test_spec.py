import copy
import subprocess
import sys

import pytest
import yaml

from driftloop.errors import DriftloopError
from driftloop.features.aggregations import AGGREGATIONS
from driftloop.models.flavors import FLAVORS
from driftloop.settings import DEMO_SPEC
from driftloop.spec import Span, load_spec, parse_duration, parse_spec
from tests.support import SPECS


@pytest.fixture
def demo() -> dict:
    return yaml.safe_load(DEMO_SPEC.read_text())


def test_demo_spec_is_valid_and_derives_model_inputs():
    spec = load_spec(DEMO_SPEC)
    assert spec.events.entity == "user_id"
    assert spec.outcomes.label == "is_fraud"
    # windowed features first, then the event fields a model can read; never ids, entity or time
    assert spec.model_inputs[: len(spec.features)] == tuple(f.name for f in spec.features)
    assert {"amount", "merchant_category", "country", "channel"} <= set(spec.model_inputs)
    assert not {"event_id", "user_id", "event_time"} & set(spec.model_inputs)
    assert spec.feature_ttl == 2 * 86400
    assert spec.features[2].window.step == 3600


def test_the_flavor_registry_decides_what_a_spec_may_name(demo):
    demo["model"].update(flavor="sklearn", estimator="extra_trees")
    demo["retrain"]["candidates"] = {"sklearn": "mlp", "river": "hoeffding_adaptive_tree"}
    spec = parse_spec(demo, "my_spec.yaml")
    assert (spec.model.flavor, spec.model.estimator) == ("sklearn", "extra_trees")
    assert spec.retrain.candidates == {"sklearn": "mlp", "river": "hoeffding_adaptive_tree"}


def test_policy_spans_are_counts_of_events_or_durations_of_event_time(demo):
    demo["drift"].update(evaluate_every=["500 events", "7d"], cooldown="3d", schedule_every="20000 events")
    demo["model"]["warmup"] = "1 event"
    demo["canary"]["max_length"] = "12h"
    spec = parse_spec(demo, "my_spec.yaml")
    assert spec.drift.evaluate_every == (Span(events=500), Span(seconds=7 * 86400))
    assert spec.drift.cooldown == Span(seconds=3 * 86400) and spec.drift.schedule_every == (Span(events=20000),)
    assert spec.model.warmup == Span(events=1) and spec.canary.max_length == Span(seconds=43200)
    assert str(spec.drift.cooldown) == "3d" and spec.drift.cooldown.left(10, 86400 + 3600) == "1.96d of event time"
    assert spec.model.warmup.left(0, 0) == "1 event" and spec.drift.schedule_every[0].left(30_000, 0) == "0 events"


def test_the_spellings_before_spans_still_read(demo):
    del demo["drift"]["evaluate_every"], demo["model"]["warmup"]
    demo["drift"].update(evaluate_every_events=250, evaluate_every_seconds=30, schedule_every_hours=2)
    demo["model"]["warmup_events"] = 4000
    spec = parse_spec(demo, "my_spec.yaml")
    assert spec.drift.evaluate_every == (Span(events=250), Span(seconds=30))
    assert spec.drift.schedule_every == (Span(seconds=7200),) and spec.model.warmup == Span(events=4000)


def test_the_defaults_split_any_stream_and_retrain_only_the_specs_own_model(demo):
    for section, key in (
        ("drift", "evaluate_every"),
        ("drift", "cooldown"),
        ("model", "warmup"),
        ("canary", "max_length"),
    ):
        demo[section].pop(key, None)
    spec = parse_spec(demo, "my_spec.yaml")
    assert spec.canary.assign == "event" and spec.canary.max_length is None
    assert spec.drift.cooldown == Span(events=2000) and spec.drift.evaluate_every == (Span(events=500),)
    assert spec.model.placeholder_model == ("river", "logistic_regression") and spec.retrain.candidates is None
    demo["model"]["placeholder"] = "none"
    assert parse_spec(demo, "my_spec.yaml").model.placeholder_model is None


def test_durations():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("10m") == 600
    assert parse_duration("7d") == 7 * 86400
    for bad in ("0s", "10", "1w", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def _break(document, path, value):
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("events", "entity"), "account", "events.entity: 'account' is not one of events.fields"),
        (("events", "time_field"), "amount", "events.time_field: field 'amount' must have type timestamp"),
        (("events", "fields", "amount", "type"), "decimal", "events.fields.amount.type: Input should be"),
        (("events", "fields", "channel", "values"), KeyError, "events.fields.channel.values: a category field needs"),
        (("events", "fields", "country", "min"), 3, "events.fields.country: min/max apply only"),
        (("events", "colour"), "red", "events.colour: unknown key"),
        (("outcomes", "label"), KeyError, "outcomes.label: required key is missing"),
        (("outcomes", "label"), "amount", "outcomes.label: the label must not be an event field"),
        (("features", 1, "field"), "country", "features[1].field: 'country' is not a numeric field"),
        (("features", 2, "window", "step"), "48h", "features[2].window.step: a hopping window needs a step smaller"),
        (("features", 0, "window", "size"), "ten minutes", "features[0].window.size: 'ten minutes' is not a positive"),
        (("features", 3, "agg"), "median", "features[3].agg: Input should be"),
        (("features", 5, "window"), {"size": "1h"}, "features[5].window: time_since_last takes no window"),
        (("features", 1, "name"), "amount", "features[1].name: 'amount' is already used"),
        (("features", 1, "window", "size"), "3d", "features[1].window.size: window is longer than feature_ttl"),
        (("model", "estimator"), "xgboost", "model.estimator: onnx estimators are"),
        (
            ("model", "flavor"),
            "sklearn_pipeline",
            f"model.flavor: 'sklearn_pipeline' is not a model flavor; the flavors are {', '.join(FLAVORS)}",
        ),
        (
            ("retrain", "candidates"),
            {"onnx": "random_forest", "river": "gradient_boosting"},
            "retrain.candidates.river: river estimators are logistic_regression, hoeffding_adaptive_tree",
        ),
        (
            ("retrain", "candidates"),
            {"xgboost": "gbtree"},
            "retrain.candidates.xgboost: 'xgboost' is not a model flavor",
        ),
        (("retrain", "candidates"), {}, "retrain.candidates: name at least one"),
        (("retrain", "onnx_estimator"), "random_forest", "retrain.onnx_estimator: unknown key"),
        (("model", "threshold"), 1.5, "model.threshold: Input should be less than 1"),
        (
            ("model", "inputs"),
            ["amount", "user_ip"],
            "model.inputs[1]: 'user_ip' is neither a feature nor an event field",
        ),
        (("model", "inputs"), ["event_time"], "model.inputs[0]: 'event_time' is a timestamp field"),
        (("canary", "share"), 0, "canary.share: Input should be greater than 0"),
        (
            ("drift", "cooldown"),
            "soon",
            "drift.cooldown: 'soon' is neither a count of events like `2000 events` nor an event-time duration",
        ),
        (
            ("drift", "cooldown"),
            600,
            "drift.cooldown: 600 has no unit: write `600 events` for a count of events, or an event-time duration",
        ),
        (("drift", "cooldown"), "0 events", "drift.cooldown: '0 events': the count of events must be at least 1"),
        (
            ("drift", "evaluate_every"),
            ["500 events", "1000 events"],
            "drift.evaluate_every: give at most one count of events and one duration",
        ),
        (("drift", "evaluate_every"), [], "drift.evaluate_every: give a count of events like `500 events`"),
        (
            ("drift", "evaluate_every_events"),
            500,
            "drift: evaluate_every_events is the old spelling of drift.evaluate_every; give it once",
        ),
        (("model", "warmup"), "2 weeks", "model.warmup: '2 weeks' is neither a count of events"),
        (("canary", "max_length"), 5000, "canary.max_length: 5000 has no unit"),
        (("canary", "assign"), "user", "canary.assign: Input should be 'event' or 'entity'"),
        (
            ("canary", "max_length"),
            "2000 events",
            "canary.max_length: 2000 events hold about 200 challenger events at canary.share 0.1, fewer than "
            "canary.min_samples 300: a trial could never decide; make it at least 3000 events",
        ),
        (
            ("model", "placeholder"),
            "onnx:gradient_boosting",
            "model.placeholder: onnx models cannot serve untrained; write one of river:logistic_regression,",
        ),
        (("model", "placeholder"), "river", "model.placeholder: 'river' is not flavor:estimator; write one of"),
    ],
)
def test_errors_name_file_path_and_problem(demo, path, value, expected):
    with pytest.raises(DriftloopError) as error:
        parse_spec(_break(copy.deepcopy(demo), path, value), "my_spec.yaml")
    assert str(error.value).startswith(f"my_spec.yaml: {expected}"), str(error.value)


def test_agg_error_lists_the_registered_aggregations(demo):
    with pytest.raises(DriftloopError) as error:
        parse_spec(_break(copy.deepcopy(demo), ("features", 3, "agg"), "median"), "my_spec.yaml")
    assert all(repr(name) in str(error.value) for name in AGGREGATIONS), str(error.value)


@pytest.mark.parametrize("agg", list(AGGREGATIONS))
def test_whether_a_feature_needs_a_field_and_a_window_comes_from_its_aggregation(demo, agg):
    aggregation = AGGREGATIONS[agg]
    where = f"my_spec.yaml: features[{len(demo['features'])}]"

    def problem(**feature) -> str | None:
        document = copy.deepcopy(demo)
        document["features"].append({"name": "extra", "agg": agg, **feature})
        try:
            parse_spec(document, "my_spec.yaml")
        except DriftloopError as error:
            return str(error)
        return None

    window = {"size": "1h"}
    complete = {"field": "amount", **({"window": window} if aggregation.windowed else {})}
    assert problem(**complete) is None
    no_field = {key: value for key, value in complete.items() if key != "field"}
    assert problem(**no_field) == (
        f"{where}.field: agg {agg!r} needs a numeric event field" if aggregation.needs_field else None
    )
    if aggregation.windowed:
        assert problem(field="amount") == f"{where}.window: agg {agg!r} needs a window"
    else:
        assert problem(field="amount", window=window) == f"{where}.window: {agg} takes no window"


def _rename_field(document, old, new):
    """The demo spec with event field `old` called `new` everywhere it is named."""
    events = document["events"]
    events["fields"][new] = events["fields"].pop(old)
    for key in ("id_field", "entity", "time_field"):
        if events[key] == old:
            events[key] = new
    for feature in document["features"]:
        if feature.get("field") == old:
            feature["field"] = new
    return document


def _with_input_field(document, name):
    document["events"]["fields"][name] = {"type": "float"}  # a default model input
    return document


# Names that check-spec used to accept and something later refused (Feast, MLflow, Kafka, skl2onnx, sklearn).
@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda d: {**d, "name": "fraud-v2"},
            "name: 'fraud-v2' must be letters, digits and '_', not starting with '_': "
            "it names the Feast project (whose SQLite tables take no '-')",
        ),
        (lambda d: {**d, "name": "_fraud"}, "name: '_fraud' must be letters, digits and '_'"),
        (lambda d: {**d, "name": "fraude é"}, "name: 'fraude é' must be letters, digits and '_'"),
        (lambda d: {**d, "name": "f" * 212}, "name: String should have at most 211 characters"),
        (
            lambda d: _break(d, ("model", "name"), "team/fraud"),
            "model.name: 'team/fraud': MLflow model names take no '/'",
        ),
        (lambda d: _break(d, ("model", "name"), "fraud:v2"), "model.name: 'fraud:v2': MLflow model names take no '/'"),
        (
            lambda d: _break(d, ("model", "name"), "it's"),
            "model.name: \"it's\": MLflow model names take no '/' or ':', "
            "and driftloop's registry searches cannot hold a \"'\"; try 'it_s'",
        ),
        (lambda d: _break(d, ("model", "name"), "..fraud"), "model.name: '..fraud' would be the file path"),
        (lambda d: _break(d, ("model", "name"), " "), "model.name: the MLflow registered model needs a name"),
        (
            lambda d: _break(d, ("model", "name"), "m" * 257),
            "model.name: 257 characters; MLflow's registry holds at most 256",
        ),
        (
            lambda d: _rename_field(d, "user_id", "__dummy"),
            "events.entity: '__dummy': names starting with '__' are Feast's",
        ),
        (lambda d: _rename_field(d, "amount", "__dummy_id"), "events.fields.__dummy_id: '__dummy_id': names starting"),
        (
            lambda d: _rename_field(d, "amount", "event_timestamp"),
            "events.fields.event_timestamp: 'event_timestamp' is the time column of the Feast offline store",
        ),
        (
            lambda d: _rename_field(d, "user_id", "event_timestamp"),
            "events.entity: 'event_timestamp' is the time column",
        ),
        (
            lambda d: _break(d, ("features", 0, "name"), "event_timestamp"),
            "features[0].name: 'event_timestamp' is the time",
        ),
        (
            lambda d: _with_input_field(d, "label"),
            "events.fields.label: 'label' is an output of the exported ONNX model",
        ),
        (
            lambda d: _with_input_field(d, "probabilities"),
            "events.fields.probabilities: 'probabilities' is an output of",
        ),
        (
            lambda d: _break(d, ("model", "inputs"), ["amount", "probabilities"]),
            "model.inputs[1]: 'probabilities' is an output of the exported ONNX model",
        ),
        (
            lambda d: _break(
                _break(d, ("events", "fields", "user_id", "type"), "int"), ("model", "inputs"), ["amount", "user_id"]
            ),
            "model.inputs[1]: 'user_id' is the entity (the Feast join key)",
        ),
        (
            lambda d: _break(d, ("model", "inputs"), ["amount", "country", "amount"]),
            "model.inputs[2]: 'amount' is listed twice",
        ),
        (
            lambda d: _break(d, ("events", "fields", "channel", "values"), ["pos", "web", "pos"]),
            "events.fields.channel.values: 'pos' listed more than once",
        ),
        (
            lambda d: _break(d, ("events", "fields", "channel", "values"), ["pos", "__missing__"]),
            "events.fields.channel.values: '__missing__' is reserved for unseen and missing categories",
        ),
        (
            lambda d: _break(d, ("events", "fields", "channel", "values"), ["pos", "__unseen__"]),
            "events.fields.channel.values: '__unseen__' is reserved",
        ),
        (
            lambda d: _break(d, ("retrain", "window_events"), 200_001),
            "retrain.window_events: Input should be less than or equal to 200000",
        ),
    ],
)
def test_names_later_refused_are_refused_by_the_spec(demo, edit, expected):
    with pytest.raises(DriftloopError) as error:
        parse_spec(edit(copy.deepcopy(demo)), "my_spec.yaml")
    assert str(error.value).startswith(f"my_spec.yaml: {expected}"), str(error.value)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nevents: [\n")
    with pytest.raises(DriftloopError, match=r"spec.yaml: line \d+: not valid YAML"):
        load_spec(path)


def test_check_spec_command(tmp_path, demo):
    ok = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "check-spec", str(DEMO_SPEC)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "is valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_break(copy.deepcopy(demo), ("model", "flavor"), "tensorflow")))
    failed = subprocess.run(
        [sys.executable, "-m", "driftloop.cli", "check-spec", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 2
    flavors = ", ".join(FLAVORS)
    assert failed.stderr.strip().splitlines() == [
        f"driftloop: error: {bad}: model.flavor: 'tensorflow' is not a model flavor; the flavors are {flavors}"
    ]


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_passes_every_check(path):
    # load_spec runs every check `driftloop check-spec` runs; a shipped spec must pass them all
    assert load_spec(path).name
