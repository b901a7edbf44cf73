"""The event -> model-input row step (features/rows.py), shared by the worker's scorer and the offline
featuriser."""

from __future__ import annotations

from driftloop.features.rows import RowBuilder
from driftloop.features.windows import FeatureComputer
from driftloop.load.generator import FraudStream, encode
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec
from driftloop.streams.worker.validation import EventValidator

SPEC = load_spec(DEMO_SPEC)


def test_the_usual_layout_extends_the_features_into_the_row():
    event = EventValidator(SPEC).validate(encode(next(iter(FraudStream(seed=3)))[0]))
    _, features = FeatureComputer(SPEC).update(None, event.event_time, event.values)
    row = RowBuilder(SPEC).row(features, event.values)
    assert row is features  # no copy per event on the hot path
    assert tuple(row) == SPEC.model_inputs
    assert {name: row[name] for name in SPEC.model_inputs[len(SPEC.features) :]} == {
        name: event.values.get(name) for name in SPEC.model_inputs[len(SPEC.features) :]
    }
    assert not {SPEC.events.id_field, SPEC.events.entity, SPEC.events.time_field} & set(row)


def test_inputs_in_another_order_get_a_row_in_that_order():
    inputs = ("amount", "amount_mean_24h", "country", "txn_count_10m", "account_age_days")
    spec = SPEC.model_copy(update={"model": SPEC.model.model_copy(update={"inputs": inputs})})
    features = {f.name: float(i) for i, f in enumerate(SPEC.features)}
    row = RowBuilder(spec).row(dict(features), {"amount": 7.5, "country": "GB", "user_id": "u1"})
    assert list(row.items()) == [
        ("amount", 7.5),
        ("amount_mean_24h", 3.0),
        ("country", "GB"),
        ("txn_count_10m", 0.0),
        ("account_age_days", None),
    ]
