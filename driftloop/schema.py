"""The model-input schema: every input the spec gives a model, derived once, and the one table of how
each system types it.

A model input is a windowed feature (spec type `float`) or an event field of type int, float, bool or
category. Its `kind` is what a model sees (numbers, bools, categories); its spec type decides how Feast,
Arrow and MLflow store it (`TYPES`). The Feast feature view, the offline files and online rows written for
it, the MLflow signature, the models and every offline featuriser read their columns from
`model_inputs(spec)`, so they cannot disagree.

    >>> from driftloop.settings import DEMO_SPEC
    >>> from driftloop.spec import load_spec
    >>> inputs = model_inputs(load_spec(DEMO_SPEC))
    >>> inputs[0]
    ModelInput(name='txn_count_10m', type='float', kind='numeric', categories=(), required=True)
    >>> inputs[-1]
    ModelInput(name='account_age_days', type='int', kind='numeric', categories=(), required=False)
    >>> [i.name for i in inputs if i.kind == "category"]
    ['merchant_category', 'country', 'channel']
    >>> inputs[-1].stored_as
    StoredAs(kind='numeric', arrow='int64', feast='Int64', mlflow='double')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from driftloop.spec import PipelineSpec

Kind = Literal["numeric", "bool", "category"]


@dataclass(frozen=True)
class StoredAs:
    kind: Kind  # what a model sees: a float (None when missing), a bool, or a str category
    arrow: str  # the pyarrow type (`pa.type_for_alias`) of the Feast offline files and the writer's tables
    feast: str  # the `feast.types` type of the feature view's field
    mlflow: str  # the column type of the registered model's MLflow signature


# Spec type -> how it is stored. Models read ints as floats; Feast and the offline files keep them int64.
TYPES: dict[str, StoredAs] = {
    "float": StoredAs("numeric", "float64", "Float64", "double"),
    "int": StoredAs("numeric", "int64", "Int64", "double"),
    "bool": StoredAs("bool", "bool", "Bool", "boolean"),
    "category": StoredAs("category", "string", "String", "string"),
}


@dataclass(frozen=True)
class ModelInput:
    name: str
    type: str  # the spec type: "float" for a windowed feature, else the event field's type (a key of TYPES)
    kind: Kind
    categories: tuple[str, ...] = ()  # the spec's known values, for category inputs
    required: bool = True  # False: an optional event field, None when the event leaves it out

    @property
    def stored_as(self) -> StoredAs:
        return TYPES[self.type]

    @classmethod
    def of_kind(cls, name: str, kind: Kind) -> ModelInput:
        """An input as a saved model records it: by kind only, which is all a model reads."""
        return cls(name, next(t for t, stored in TYPES.items() if stored.kind == kind), kind)


def model_inputs(spec: PipelineSpec) -> tuple[ModelInput, ...]:
    """The spec's model inputs, in `spec.model_inputs` order."""
    windowed = {f.name for f in spec.features}
    inputs = []
    for name in spec.model_inputs:
        if name in windowed:
            inputs.append(ModelInput(name, "float", TYPES["float"].kind))
            continue
        field = spec.events.fields[name]
        inputs.append(ModelInput(name, field.type, TYPES[field.type].kind, tuple(field.values or ()), field.required))
    return tuple(inputs)
