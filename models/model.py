"""The base class of every model flavor: what the scorer, the registry, bootstrap and retraining rely on.

A flavor is a subclass of `Model` listed in `driftloop/models/flavors.py` (the registry); the spec's
`model.flavor` names it and `model.estimator` one of its `estimators`. Every registered flavor passes the
contract suite in `driftloop/models/checks.py` (tests/unit/test_flavors.py runs it over the registry).
docs/extending-flavors.md walks through adding one.

Rows are dicts name -> value over the spec's model inputs (`driftloop.schema`): a float or None for numeric
inputs, a bool or None for bools, a str for categories ("__unseen__" outside the spec's values, None when
missing); labels are 0/1. The scorer calls `predict_proba` once per batch, so it must be fast on 500 rows.

A flavor from scratch, the smallest there is: it scores the share of positive labels it has learned.

    >>> import json
    >>> from pathlib import Path
    >>> from driftloop.schema import ModelInput, model_inputs
    >>> class BaseRate(Model):
    ...     flavor, estimators, filename = "base_rate", ("share",), "base_rate.json"
    ...     online = cold_start = True
    ...
    ...     def __init__(self, columns, positives=0, seen=0):
    ...         self.columns, self.estimator, self.positives, self.seen = columns, "share", positives, seen
    ...
    ...     @classmethod
    ...     def new(cls, spec):
    ...         return cls(model_inputs(spec))
    ...
    ...     def predict_proba(self, rows):
    ...         return np.full(len(rows), (self.positives + 1) / (self.seen + 2))  # Laplace: 0.5 when cold
    ...
    ...     def learn(self, rows, labels):
    ...         self.check_lengths(rows, labels)
    ...         self.positives, self.seen = self.positives + sum(labels), self.seen + len(labels)
    ...
    ...     def save(self, directory):
    ...         path = Path(directory) / self.filename
    ...         path.parent.mkdir(parents=True, exist_ok=True)
    ...         columns = [[c.name, c.kind] for c in self.columns]
    ...         path.write_text(json.dumps({"columns": columns, "positives": self.positives, "seen": self.seen}))
    ...         return [path]
    ...
    ...     @classmethod
    ...     def load(cls, directory):
    ...         state = json.loads((Path(directory) / cls.filename).read_text())
    ...         columns = tuple(ModelInput.of_kind(name, kind) for name, kind in state["columns"])
    ...         return cls(columns, state["positives"], state["seen"])

    >>> from driftloop.settings import DEMO_SPEC
    >>> from driftloop.spec import load_spec
    >>> model = BaseRate.new(load_spec(DEMO_SPEC))
    >>> model.predict_proba([{}, {}])
    array([0.5, 0.5])
    >>> model.learn([{}, {}, {}], [1, 0, 0])
    >>> model.predict_proba([{}])
    array([0.4])
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     files = model.save(directory)
    ...     BaseRate.load(directory).predict_proba([{}])
    array([0.4])

A flavor that is not `online` keeps the default `learn` (it raises) and `new` (it cannot start cold) and
overrides `train` instead, as `onnx_flavor.OnnxModel` does.
"""

from __future__ import annotations

import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from driftloop.errors import DriftloopError
from driftloop.models.inputs import Row
from driftloop.schema import ModelInput
from driftloop.spec import PipelineSpec


class Model(ABC):
    # The spec's `model.flavor` and the version tag `driftloop.flavor`.
    flavor: ClassVar[str]
    # The spec's `model.estimator` values it takes.
    estimators: ClassVar[tuple[str, ...]]
    # The one file `save` writes and `load` opens; no two flavors share one, so a directory names its flavor.
    filename: ClassVar[str]
    # PyPI packages, beyond driftloop, mlflow, numpy, pandas and pyarrow, that score a saved model: they
    # become the pip requirements of the MLflow model.
    requirements: ClassVar[tuple[str, ...]] = ()
    # True when `learn` updates the model in place, row by row: the worker then learns from every outcome.
    online: ClassVar[bool] = False
    # True when `new` gives an untrained model that already scores (about 0.5), so a pipeline can start
    # without warm-up rows; otherwise a cold-start placeholder serves until the first training.
    cold_start: ClassVar[bool] = False

    columns: tuple[ModelInput, ...]  # the inputs it reads, in spec order
    estimator: str

    @classmethod
    def new(cls, spec: PipelineSpec) -> Model:
        """A fresh, untrained model of spec.model (cold_start flavors)."""
        raise DriftloopError(
            f"model {spec.model.name}: a {cls.flavor} model cannot start cold; train it on rows of both labels"
        )

    @classmethod
    def train(cls, spec: PipelineSpec, rows: Sequence[Row], labels: Sequence[int]) -> Model:
        """A model of spec.model trained on rows (oldest first). This default, for online flavors: a new
        model that learns the rows in order."""
        model = cls.new(spec)
        model.learn(rows, labels)
        return model

    @abstractmethod
    def predict_proba(self, rows: Sequence[Row]) -> np.ndarray:
        """P(label=1) for each row, as a float64 array of len(rows); one call per batch."""

    def learn(self, rows: Sequence[Row], labels: Sequence[int]) -> None:
        """Learn from labelled rows in order (online flavors)."""
        raise NotImplementedError(f"{self.flavor} models are not online learners; retrain them")

    @abstractmethod
    def save(self, directory: str | Path) -> list[Path]:
        """Write the model's file (`filename`) into directory, created if needed; returns the paths written."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> Model:
        """The model `save` wrote into directory. The registry calls it only on files whose signature it has
        verified, and only on the flavor the signature names."""

    @staticmethod
    def check_lengths(rows: Sequence[Row], labels: Sequence[int]) -> None:
        if len(rows) != len(labels):
            raise ValueError(f"{len(rows)} rows but {len(labels)} labels")

    @classmethod
    def make_estimator(
        cls, spec: PipelineSpec, classes: Mapping[str, str], defaults: Mapping[str, Any] | None = None
    ) -> Any:
        """An instance of `classes[spec.model.estimator]` ("module:Class", imported only now, so that reading a
        flavor's `estimators` stays cheap) with `defaults` overridden by the spec's `model.params`."""
        path = classes.get(spec.model.estimator)
        if path is None:
            raise DriftloopError(f"model {spec.model.name}: {cls.flavor} estimators are {', '.join(classes)}")
        try:
            return pkgutil.resolve_name(path)(**{**(defaults or {}), **spec.model.params})
        except TypeError as exc:
            raise DriftloopError(f"model {spec.model.name}: model.params: {exc}") from None
