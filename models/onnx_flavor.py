"""The ONNX flavor: a scikit-learn pipeline trained in batch, exported with skl2onnx, scored with onnxruntime.

Pipeline, built from the spec:

    ColumnTransformer(
        OneHotEncoder(categories = the spec's values, handle_unknown="ignore") on category columns,
        SimpleImputer(mean) [| StandardScaler, linear models only] on numeric and bool columns (bools as 0/1))
  | estimator  (logistic_regression | gradient_boosting | random_forest)

`gradient_boosting` is sklearn's GradientBoostingClassifier: skl2onnx 1.20 lists a converter for
HistGradientBoostingClassifier, but with onnx 1.23 it fails (it writes a Python bool into the integer
attribute `nodes_missing_value_tracks_true` of every leaf), so the histogram variant is not exportable here.

Each input column is its own ONNX input of shape [N, 1] (string for categories, float for the rest),
exported with `zipmap=False` so the session returns a plain [N, 2] probability array; a batch is one
`InferenceSession.run`. "__unseen__" (and a None category) encode as all-zero one-hot columns, a missing
number is imputed with the training mean. Persisted as one file, `model.onnx`, whose metadata names the
flavor and estimator. Not online: `learn` raises; retrain with `train_onnx`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from driftloop.errors import DriftloopError
from driftloop.models.inputs import InputColumn, Row, as_category, as_float, input_columns
from driftloop.spec import PipelineSpec

FILENAME = "model.onnx"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

ESTIMATORS = {
    "logistic_regression": LogisticRegression,
    "gradient_boosting": GradientBoostingClassifier,
    "random_forest": RandomForestClassifier,
}
_DEFAULT_PARAMS = {"logistic_regression": {"max_iter": 1000}}
_TREES = ("gradient_boosting", "random_forest")


def build_sklearn_pipeline(spec: PipelineSpec, columns: Sequence[InputColumn]) -> Pipeline:
    estimator_cls = ESTIMATORS.get(spec.model.estimator)
    if estimator_cls is None:
        raise DriftloopError(f"model {spec.model.name}: onnx estimators are {', '.join(ESTIMATORS)}")
    try:
        estimator = estimator_cls(**{**_DEFAULT_PARAMS.get(spec.model.estimator, {}), **spec.model.params})
    except TypeError as exc:
        raise DriftloopError(f"model {spec.model.name}: model.params: {exc}") from None
    categories = [c for c in columns if c.kind == "category"]
    numerics = [c.name for c in columns if c.kind != "category"]
    transformers = []
    if categories:
        transformers.append(("categories", OneHotEncoder(categories=[list(c.categories) for c in categories],
                                                         handle_unknown="ignore", sparse_output=False),
                             [c.name for c in categories]))
    if numerics:
        steps = [("impute", SimpleImputer(strategy="mean", keep_empty_features=True))]
        if spec.model.estimator not in _TREES:
            # Trees split on thresholds and need no scaling; leaving it out also keeps onnxruntime's
            # float32 arithmetic from moving a value across a split that sklearn saw on the other side.
            steps.append(("scale", StandardScaler()))
        transformers.append(("numerics", Pipeline(steps), numerics))
    return Pipeline([("features", ColumnTransformer(transformers)), ("estimator", estimator)])


def _frame(columns: Sequence[InputColumn], rows: Sequence[Row]) -> pd.DataFrame:
    """Rows as sklearn sees them: float64 (NaN when missing) and str columns ("__missing__" for None)."""
    data: dict[str, Any] = {}
    for c in columns:
        if c.kind == "category":
            data[c.name] = np.array([as_category(r.get(c.name)) for r in rows], dtype=object)
        else:
            data[c.name] = np.array([_nan(as_float(r.get(c.name))) for r in rows], dtype=np.float64)
    return pd.DataFrame(data, columns=[c.name for c in columns])


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def train_onnx(spec: PipelineSpec, rows: Sequence[Row], labels: Sequence[int]) -> OnnxModel:
    """Fit the spec's scikit-learn pipeline on rows/labels and export it to ONNX.

    The fitted sklearn pipeline stays available as `.sklearn` on the returned model (not persisted).
    """
    if len(rows) != len(labels):
        raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
    y = np.asarray([int(bool(label)) for label in labels])
    if len(set(y.tolist())) < 2:
        raise DriftloopError(f"model {spec.model.name}: training an onnx model needs rows of both labels "
                             f"(got {len(y)} rows, all {y[0] if len(y) else 'absent'})")
    columns = input_columns(spec)
    pipeline = build_sklearn_pipeline(spec, columns)
    pipeline.fit(_frame(columns, rows), y)
    model = OnnxModel(_export(pipeline, columns, spec))
    model.sklearn = pipeline
    return model


def _export(pipeline: Pipeline, columns: Sequence[InputColumn], spec: PipelineSpec) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    initial_types = [(c.name, StringTensorType([None, 1]) if c.kind == "category" else FloatTensorType([None, 1]))
                     for c in columns]
    onx = convert_sklearn(pipeline, name=spec.model.name, initial_types=initial_types,
                          options={id(pipeline.named_steps["estimator"]): {"zipmap": False}},
                          target_opset=TARGET_OPSET)
    meta = {"driftloop.flavor": "onnx", "driftloop.estimator": spec.model.estimator,
            "driftloop.columns": json.dumps([[c.name, c.kind] for c in columns])}
    for key, value in meta.items():
        prop = onx.metadata_props.add()
        prop.key, prop.value = key, value
    return onx.SerializeToString()


class OnnxModel:
    """An exported scikit-learn pipeline run by onnxruntime; batch-trained, so not online."""

    flavor = "onnx"
    online = False

    def __init__(self, onnx_bytes: bytes):
        self._bytes = onnx_bytes
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        # One thread, the caller's: by default onnxruntime adds a pool thread per core that spins
        # between runs, and on a 2-core worker it took half a core from scoring at 5,000 events/s.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("driftloop.flavor") != "onnx":
            raise DriftloopError("not a driftloop onnx model (metadata driftloop.flavor is missing)")
        self.estimator = meta.get("driftloop.estimator", "")
        self.columns = tuple(InputColumn(name, kind) for name, kind in json.loads(meta["driftloop.columns"]))
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = "probabilities" if "probabilities" in outputs else outputs[-1]
        self.sklearn: Pipeline | None = None

    def _feeds(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        feeds = {}
        for c in self.columns:
            values = [r.get(c.name) for r in rows]
            if c.kind == "category":
                column = [v if type(v) is str else as_category(v) for v in values]
                feeds[c.name] = np.array(column, dtype=object).reshape(-1, 1)
                continue
            try:  # the scorer's rows hold floats, ints, bools and None (-> NaN): numpy converts them at once
                column = np.array(values, dtype=np.float64)
            except (TypeError, ValueError):  # pandas NA, numeric text, ...: one value at a time
                column = np.array([_nan(as_float(v)) for v in values], dtype=np.float64)
            feeds[c.name] = column.astype(np.float32).reshape(-1, 1)
        return feeds

    def predict_proba(self, rows: Sequence[Row]) -> np.ndarray:
        if not rows:
            return np.empty(0, dtype=np.float64)
        probabilities = self.session.run([self._output], self._feeds(rows))[0]
        return np.asarray(probabilities, dtype=np.float64)[:, 1]

    def learn(self, rows: Sequence[Row], labels: Sequence[int]) -> None:
        """ONNX models do not learn online: retrain with `train_onnx` and register a new version."""
        raise NotImplementedError("onnx models are not online learners; retrain with train_onnx")

    def save(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / FILENAME
        path.write_bytes(self._bytes)
        return [path]

    @classmethod
    def load(cls, directory: str | Path) -> OnnxModel:
        return cls((Path(directory) / FILENAME).read_bytes())
