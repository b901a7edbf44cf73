"""Shared test helpers: models."""

from __future__ import annotations

import yaml

from driftloop.models.checks import labelled_rows
from driftloop.settings import DEMO_SPEC
from driftloop.spec import PipelineSpec, parse_spec


def model_spec(
    flavor: str = "river", estimator: str = "logistic_regression", params: dict | None = None, name: str = "card_fraud"
) -> PipelineSpec:
    document = yaml.safe_load(DEMO_SPEC.read_text())
    document["name"] = name
    document["model"].update(name=name, flavor=flavor, estimator=estimator, params=params or {})
    return parse_spec(document, "test")


DEMO = model_spec()


ROWS, LABELS = labelled_rows(DEMO, 3000)


TRAIN, TRAIN_Y = ROWS[:2000], LABELS[:2000]
