"""The common model interface every flavor implements, and loading a saved model of any flavor.

- `Model` — what the scorer, the registry and retraining rely on.
- `new_model(spec)` — a fresh, untrained River model (ONNX models are trained: `train_onnx`).
- `train_onnx(spec, rows, labels)` — fit and export an ONNX model.
- `with_model(spec, flavor, estimator)` — the spec with another model in its `model` section.
- `load(directory)` — a model saved by `Model.save`, whichever its flavor.

Rows are dicts name -> value over `spec.model_inputs` (see `driftloop.models.inputs`); labels are 0/1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from driftloop.errors import DriftloopError
from driftloop.models import onnx_flavor, river_flavor
from driftloop.models.inputs import InputColumn
from driftloop.models.onnx_flavor import OnnxModel, train_onnx
from driftloop.models.river_flavor import RiverModel
from driftloop.spec import PipelineSpec

__all__ = ["Model", "OnnxModel", "RiverModel", "load", "new_model", "train_onnx", "with_model"]


@runtime_checkable
class Model(Protocol):
    flavor: str  # "river" | "onnx"
    online: bool  # True when learn() updates the model in place
    columns: tuple[InputColumn, ...]  # the inputs it reads, in spec order

    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(label=1) for each row, as a float64 array of len(rows); one call per batch."""

    def learn(self, rows: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> None:
        """Learn from labelled rows in order (River). Not online flavors raise NotImplementedError."""

    def save(self, directory: str | Path) -> list[Path]:
        """Write the model's file(s) into directory (created if needed); returns their paths."""


def with_model(spec: PipelineSpec, flavor: str, estimator: str) -> PipelineSpec:
    """The spec whose `model` section names another flavor/estimator (same name, inputs, threshold). The spec's
    `model.params` belong to its own estimator, so they carry over only when that stays the same."""
    same = (flavor, estimator) == (spec.model.flavor, spec.model.estimator)
    model = spec.model.model_copy(update={"flavor": flavor, "estimator": estimator,
                                          "params": spec.model.params if same else {}})
    return spec.model_copy(update={"model": model})


def new_model(spec: PipelineSpec) -> Model:
    """A fresh untrained model for the spec; only the River flavor can start cold."""
    if spec.model.flavor == "river":
        return RiverModel.from_spec(spec)
    raise DriftloopError(f"model {spec.model.name}: an onnx model cannot start cold; train it with train_onnx")


def load(directory: str | Path, flavor: str | None = None) -> Model:
    """Load the model saved in directory, of `flavor` when given (the registry passes the signed one), else of
    whichever flavor's file is there. A River model is a pickle: verify its signature first."""
    directory = Path(directory)
    for kind, filename in ((RiverModel, river_flavor.FILENAME), (OnnxModel, onnx_flavor.FILENAME)):
        if flavor in (None, kind.flavor) and (directory / filename).is_file():
            return kind.load(directory)
    of_flavor = f" of flavor {flavor}" if flavor else ""
    raise DriftloopError(f"{directory}: no saved model{of_flavor} ({river_flavor.FILENAME} or {onnx_flavor.FILENAME})")
