"""The flavor registry, and the model operations that go through it.

- `FLAVORS` — flavor name -> its `Model` subclass, one line per flavor below (docs/extending-flavors.md).
- `flavor_of(name)` — the class, or a DriftloopError listing the flavors.
- `new_model(spec)` — a fresh, untrained model (cold_start flavors).
- `train(spec, rows, labels)` — a model of spec.model trained on rows.
- `with_model(spec, flavor, estimator)` — the spec with another model in its `model` section.
- `retrain_candidates(spec)` — the (flavor, estimator) of each model a retraining trains.
- `load(directory, flavor)` — a model saved by `Model.save`.

Rows are dicts name -> value over the spec's model inputs (`driftloop.schema`); labels are 0/1.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from driftloop.errors import DriftloopError
from driftloop.models.model import Model
from driftloop.spec import PipelineSpec

__all__ = ["FLAVORS", "Model", "flavor_of", "load", "new_model", "retrain_candidates", "train", "with_model"]

# One "module:Class" per flavor. The modules import their libraries only when a model is built or loaded,
# so that checking a spec (which reads every flavor's estimators) stays fast.
FLAVORS: dict[str, type[Model]] = {
    cls.flavor: cls
    for cls in map(
        pkgutil.resolve_name,
        (
            "driftloop.models.onnx_flavor:OnnxModel",
            "driftloop.models.river_flavor:RiverModel",
            "driftloop.models.sklearn_flavor:SklearnModel",
        ),
    )
}


def flavor_of(name: str) -> type[Model]:
    """The flavor registered as `name`; a DriftloopError naming the flavors for any other name.

    >>> flavor_of("river").cold_start, flavor_of("onnx").cold_start  # river serves before any training
    (True, False)
    >>> flavor_of("tensorflow")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    driftloop.errors.DriftloopError: 'tensorflow' is not a model flavor; the flavors are ...
    """
    cls = FLAVORS.get(name)
    if cls is None:
        raise DriftloopError(f"{name!r} is not a model flavor; the flavors are {', '.join(FLAVORS)}")
    return cls


def with_model(spec: PipelineSpec, flavor: str, estimator: str) -> PipelineSpec:
    """The spec whose `model` section names another flavor/estimator (same name, inputs, threshold). The spec's
    `model.params` belong to its own estimator, so they carry over only when that stays the same."""
    same = (flavor, estimator) == (spec.model.flavor, spec.model.estimator)
    model = spec.model.model_copy(
        update={"flavor": flavor, "estimator": estimator, "params": spec.model.params if same else {}}
    )
    return spec.model_copy(update={"model": model})


def new_model(spec: PipelineSpec) -> Model:
    """A fresh untrained model for the spec; only a cold_start flavor can give one."""
    return flavor_of(spec.model.flavor).new(spec)


def train(spec: PipelineSpec, rows: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> Model:
    """The spec's model trained on rows (oldest first): fitted in batch, or learned in order by an online flavor."""
    return flavor_of(spec.model.flavor).train(spec, rows, labels)


def retrain_candidates(spec: PipelineSpec) -> list[tuple[str, str]]:
    """(flavor, estimator) of each candidate a retraining trains: the spec's `retrain.candidates`, or else the
    spec's own model only (a River pipeline never gets an ONNX challenger it did not ask for)."""
    if spec.retrain.candidates is not None:
        return list(spec.retrain.candidates.items())
    return [(spec.model.flavor, spec.model.estimator)]


def load(directory: str | Path, flavor: str | None = None) -> Model:
    """Load the model saved in directory, of `flavor` when given (the registry passes the signed one: only that
    flavor's file is opened), else of the flavor whose file is there (each flavor has its own file name)."""
    directory = Path(directory)
    kinds = [flavor_of(flavor)] if flavor is not None else list(FLAVORS.values())
    for kind in kinds:
        if (directory / kind.filename).is_file():
            return kind.load(directory)
    of_flavor = f" of flavor {flavor}" if flavor else ""
    raise DriftloopError(f"{directory}: no saved model{of_flavor} ({', '.join(k.filename for k in kinds)})")
