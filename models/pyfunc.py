"""The MLflow pyfunc face of a driftloop model: what the MLflow UI, `mlflow.pyfunc.load_model` and
`mlflow models serve` see. driftloop itself loads the saved files directly (registry.load_version),
after verifying their checksum; this wrapper exists so a registered version is a proper MLflow model.

Artifacts: `model` (the directory written by Model.save) and `reference` (reference.parquet).
Input: a DataFrame with the spec's model inputs; output: P(label=1) per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema, TensorSpec

from driftloop.models.inputs import frame_to_rows
from driftloop.schema import model_inputs
from driftloop.spec import PipelineSpec


def signature_for(spec: PipelineSpec) -> ModelSignature:
    """Input schema from the spec's model inputs (type, and optional when the event field is optional)."""
    inputs = Schema([ColSpec(i.stored_as.mlflow, i.name, required=i.required) for i in model_inputs(spec)])
    outputs = Schema([TensorSpec(np.dtype("float64"), (-1,))])  # P(label=1) per row
    return ModelSignature(inputs=inputs, outputs=outputs)


class DriftloopPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from driftloop.models.flavors import load

        self._model = load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        rows = frame_to_rows(self._model.columns, pd.DataFrame(model_input))
        return self._model.predict_proba(rows)
