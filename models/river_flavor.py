"""The River flavor: an online pipeline that scores and learns one event at a time.

Pipeline, built from the spec:

    Select(categories) | OneHotEncoder
  + Discard(categories), i.e. numerics and bools (as 0/1) | StatImputer(mean) | StandardScaler
  | estimator  (logistic_regression | hoeffding_adaptive_tree | adaptive_random_forest, spec params)

A missing optional value is imputed with the running mean of what the pipeline has learned; a None
category becomes "__missing__" and, like "__unseen__", gets its own one-hot column as soon as the
model learns from it. Persisted as one pickle file, `model.pkl`. River is imported when a model is built
or loaded, not with this module: spec checks read `RiverModel.estimators`.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from driftloop.errors import DriftloopError
from driftloop.models.inputs import Row, as_category, as_float
from driftloop.models.model import Model
from driftloop.schema import ModelInput, model_inputs
from driftloop.spec import PipelineSpec

if TYPE_CHECKING:
    from river import compose

_FORMAT = 1
_CLASSES = {
    "logistic_regression": "river.linear_model:LogisticRegression",
    "hoeffding_adaptive_tree": "river.tree:HoeffdingAdaptiveTreeClassifier",
    "adaptive_random_forest": "river.forest:ARFClassifier",
}
_RANDOMISED = {"hoeffding_adaptive_tree", "adaptive_random_forest"}


def build_pipeline(spec: PipelineSpec, columns: Sequence[ModelInput]) -> compose.Pipeline:
    from river import compose, preprocessing, stats

    # Randomised estimators get a fixed seed unless the spec's params name one: the same rows give the same
    # model, so a retraining and a backtest can be reproduced.
    seeded = {"seed": 0} if spec.model.estimator in _RANDOMISED else None
    estimator = RiverModel.make_estimator(spec, _CLASSES, seeded)
    categories = [c.name for c in columns if c.kind == "category"]
    numerics = [c.name for c in columns if c.kind != "category"]
    branches = []
    if categories:
        branches.append(compose.Select(*categories) | preprocessing.OneHotEncoder())
    if numerics:
        # Discard(categories) rather than Select(numerics): Select iterates a set, whose order can change
        # when the model is unpickled, and the linear models sum x in dict order, so a reloaded model
        # would differ in the last bit. Discard keeps the spec's column order.
        imputer = preprocessing.StatImputer(*((name, stats.Mean()) for name in numerics))
        branches.append(compose.Discard(*categories) | imputer | preprocessing.StandardScaler())
    features = branches[0] if len(branches) == 1 else compose.TransformerUnion(*branches)
    return features | estimator


class RiverModel(Model):
    """A River pipeline; learns online, and starts cold (it scores about 0.5 before learning anything)."""

    flavor = "river"
    estimators = tuple(_CLASSES)
    filename = "model.pkl"
    requirements = ("river",)
    online = True
    cold_start = True

    def __init__(self, columns: Sequence[ModelInput], pipeline: compose.Pipeline, estimator: str):
        self.columns = tuple(columns)
        self.pipeline = pipeline
        self.estimator = estimator

    @classmethod
    def new(cls, spec: PipelineSpec) -> RiverModel:
        columns = model_inputs(spec)
        return cls(columns, build_pipeline(spec, columns), spec.model.estimator)

    def _x(self, row: Row) -> dict[str, Any]:
        x: dict[str, Any] = {}
        for c in self.columns:
            v = row.get(c.name)
            # the scorer's rows already hold str categories and float numbers: skip the converters for them
            if c.kind == "category":
                x[c.name] = v if type(v) is str else as_category(v)
            else:
                x[c.name] = v if type(v) is float and v == v else as_float(v)  # v == v: NaN becomes None
        return x

    def predict_proba(self, rows: Sequence[Row]) -> np.ndarray:
        predict = self.pipeline.predict_proba_one
        out = np.empty(len(rows), dtype=np.float64)
        for i, row in enumerate(rows):
            out[i] = _positive(predict(self._x(row)))
        return out

    def learn(self, rows: Sequence[Row], labels: Sequence[int]) -> None:
        self.check_lengths(rows, labels)
        learn = self.pipeline.learn_one
        for row, label in zip(rows, labels):
            learn(self._x(row), bool(label))

    def save(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.filename
        state = {
            "format": _FORMAT,
            "flavor": self.flavor,
            "estimator": self.estimator,
            "columns": self.columns,
            "pipeline": self.pipeline,
        }
        with path.open("wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return [path]

    @classmethod
    def load(cls, directory: str | Path) -> RiverModel:
        """Unpickles: only call this on files whose signature was verified (the registry does)."""
        with (Path(directory) / cls.filename).open("rb") as fh:
            state = pickle.load(fh)
        if not isinstance(state, dict) or state.get("format") != _FORMAT or state.get("flavor") != cls.flavor:
            raise DriftloopError(f"{directory}: {cls.filename} is not a driftloop river model (format {_FORMAT})")
        columns = tuple(ModelInput.of_kind(c.name, c.kind) for c in state["columns"])
        return cls(columns, state["pipeline"], state["estimator"])


def _positive(proba: dict) -> float:
    """P(label=1) from a River probability dict; 0.5 when the model has no opinion yet ({} or all zero)."""
    total = sum(proba.values())
    if not total:
        return 0.5
    return float(proba.get(True, 0.0)) / total  # True == 1, so this also finds an int 1 key
