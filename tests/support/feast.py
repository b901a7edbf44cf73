"""Shared test helpers: feast."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pandas as pd

from driftloop import settings as settings_module
from driftloop.features.feast.repo import TIMESTAMP_COLUMN, feature_view_name
from driftloop.features.feast.writer import FeastWriter
from driftloop.schema import model_inputs
from driftloop.spec import PipelineSpec
from tests.support import key_environ

START = datetime(2026, 11, 1, tzinfo=UTC).timestamp()


DAY = 86400.0


def feast_settings(tmp_path, spec_path, **env) -> settings_module.Settings:
    return settings_module.load(
        environ={
            "DRIFTLOOP_DATA_DIR": str(tmp_path / "data"),
            "DRIFTLOOP_FEAST_REPO": str(tmp_path / "repo"),
            "DRIFTLOOP_SPEC": str(spec_path),
            **key_environ(),
            **env,
        }
    )


def random_row(spec: PipelineSpec, rng: random.Random, entity: str, at: float) -> dict:
    """A stored row of every input type; optional inputs are sometimes missing (None or NaN)."""
    row = {spec.events.entity: entity, TIMESTAMP_COLUMN: at}
    for model_input in model_inputs(spec):
        name, kind = model_input.name, model_input.type
        if kind == "float":
            row[name] = rng.choice([float("nan"), None]) if rng.random() < 0.05 else rng.uniform(0, 500)
        elif kind == "int":
            row[name] = None if not model_input.required and rng.random() < 0.2 else rng.randint(0, 900)
        elif kind == "bool":
            row[name] = rng.random() < 0.5
        else:
            row[name] = rng.choice(model_input.categories)
    return row


def write_files(settings, spec, rows: list[dict], per_file: int) -> None:
    """The rows in offline files of `per_file` rows each, written as the worker's Feast writer writes them."""
    writer = FeastWriter(settings, spec)
    try:
        for start in range(0, len(rows), per_file):
            writer.write(rows[start : start + per_file])
    finally:
        writer.close()


def _feast_value(value, kind: str):
    """A value of Feast's DataFrame as the scorer's row holds it (None when pandas calls it missing)."""
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return {"float": float, "int": int, "bool": bool}.get(kind, str)(value)


def feast_answers(settings, spec, keys: list[tuple[str, int]]) -> list[dict | None]:
    """Feast's get_historical_features for each (entity, epoch microseconds); None where it returns no row."""
    from feast import FeatureStore, RepoConfig

    from driftloop.features.feast.repo import repo_config

    config = RepoConfig(**repo_config(settings, spec))
    config.repo_path = settings.feast_repo.resolve()
    store = FeatureStore(repo_path=str(config.repo_path), config=config)
    entity_df = pd.DataFrame(
        {
            spec.events.entity: [entity for entity, _ in keys],
            TIMESTAMP_COLUMN: pd.to_datetime([us for _, us in keys], unit="us", utc=True),
        }
    )
    refs = [f"{feature_view_name(spec)}:{name}" for name in spec.model_inputs]
    frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    micros = (frame[TIMESTAMP_COLUMN] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    types = {model_input.name: model_input.type for model_input in model_inputs(spec)}
    answers = {}
    for entity, us, values in zip(
        frame[spec.events.entity].tolist(), micros.tolist(), frame[list(spec.model_inputs)].to_dict("records")
    ):
        answers[(entity, us)] = {name: _feast_value(value, types[name]) for name, value in values.items()}
    return [answers.get(key) for key in keys]
