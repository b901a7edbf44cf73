"""The ONNX flavor: a scikit-learn pipeline trained in batch, exported with skl2onnx, scored with onnxruntime.

Pipeline, built from the spec:

    ColumnTransformer(
        OneHotEncoder(categories = the spec's values, handle_unknown="ignore") on category columns,
        SimpleImputer(mean) [| StandardScaler, unless the estimator is in `unscaled`] on numeric and bool
        columns (bools as 0/1))
  | estimator  (logistic_regression | gradient_boosting | random_forest)

`gradient_boosting` is sklearn's GradientBoostingClassifier: skl2onnx 1.20 lists a converter for
HistGradientBoostingClassifier, but with onnx 1.23 it fails (it writes a Python bool into the integer
attribute `nodes_missing_value_tracks_true` of every leaf), so the histogram variant is not exportable here.

Each input column is its own ONNX input of shape [N, 1] (string for categories, float for the rest),
exported with `zipmap=False` so the session returns a plain [N, 2] probability array; a batch is one
`InferenceSession.run`. "__unseen__" (and a None category) encode as all-zero one-hot columns, a missing
number is imputed with the training mean. Persisted as one file, `model.onnx`, whose metadata names the
flavor and estimator. Not online: retraining trains a new model (`OnnxModel.train`).

A subclass offers other scikit-learn estimators by extending `estimator_classes` (and `unscaled`): see
sklearn_flavor.py. scikit-learn and skl2onnx are imported when a model is trained, not with this module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from driftloop.errors import DriftloopError
from driftloop.models.inputs import Row, as_category, as_float
from driftloop.models.model import Model
from driftloop.schema import ModelInput, model_inputs
from driftloop.spec import PipelineSpec

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def _frame(columns: Sequence[ModelInput], rows: Sequence[Row]) -> pd.DataFrame:
    """Rows as sklearn sees them: float64 (NaN when missing) and str columns ("__missing__" for None)."""
    import pandas as pd  # training only: scoring does not import pandas

    data: dict[str, Any] = {}
    for c in columns:
        if c.kind == "category":
            data[c.name] = np.array([as_category(r.get(c.name)) for r in rows], dtype=object)
        else:
            data[c.name] = np.array([_nan(as_float(r.get(c.name))) for r in rows], dtype=np.float64)
    return pd.DataFrame(data, columns=[c.name for c in columns])


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


class OnnxModel(Model):
    """An exported scikit-learn pipeline run by onnxruntime; batch-trained, so not online."""

    flavor = "onnx"
    filename = "model.onnx"
    requirements = ("onnxruntime",)
    # estimator -> its scikit-learn class ("module:Class"), the defaults the spec's params override, and
    # the estimators whose numeric inputs are not scaled
    estimator_classes: ClassVar[dict[str, str]] = {
        "logistic_regression": "sklearn.linear_model:LogisticRegression",
        "gradient_boosting": "sklearn.ensemble:GradientBoostingClassifier",
        "random_forest": "sklearn.ensemble:RandomForestClassifier",
    }
    # Randomised estimators get a fixed seed unless the spec's params name one (as River's do): the same rows give
    # the same model, so a retraining and a backtest can be reproduced.
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "logistic_regression": {"max_iter": 1000},
        "gradient_boosting": {"random_state": 0},
        "random_forest": {"random_state": 0},
    }
    # Trees split on thresholds and need no scaling; leaving it out also keeps onnxruntime's float32
    # arithmetic from moving a value across a split that sklearn saw on the other side.
    unscaled: ClassVar[frozenset[str]] = frozenset({"gradient_boosting", "random_forest"})
    estimators = tuple(estimator_classes)

    def __init__(self, onnx_bytes: bytes):
        import onnxruntime

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
        if meta.get("driftloop.flavor") != self.flavor:
            raise DriftloopError(
                f"not a driftloop {self.flavor} model (its metadata driftloop.flavor is "
                f"{meta.get('driftloop.flavor')!r})"
            )
        self.estimator = meta.get("driftloop.estimator", "")
        self.columns = tuple(ModelInput.of_kind(name, kind) for name, kind in json.loads(meta["driftloop.columns"]))
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = "probabilities" if "probabilities" in outputs else outputs[-1]
        self.sklearn: Pipeline | None = None  # the fitted pipeline, on a model just trained (not persisted)

    @classmethod
    def sklearn_pipeline(cls, spec: PipelineSpec, columns: Sequence[ModelInput]) -> Pipeline:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        estimator = cls.make_estimator(spec, cls.estimator_classes, cls.defaults.get(spec.model.estimator))
        categories = [c for c in columns if c.kind == "category"]
        numerics = [c.name for c in columns if c.kind != "category"]
        transformers = []
        if categories:
            transformers.append(
                (
                    "categories",
                    OneHotEncoder(
                        categories=[list(c.categories) for c in categories],
                        handle_unknown="ignore",
                        sparse_output=False,
                    ),
                    [c.name for c in categories],
                )
            )
        if numerics:
            steps = [("impute", SimpleImputer(strategy="mean", keep_empty_features=True))]
            if spec.model.estimator not in cls.unscaled:
                steps.append(("scale", StandardScaler()))
            transformers.append(("numerics", Pipeline(steps), numerics))
        return Pipeline([("features", ColumnTransformer(transformers)), ("estimator", estimator)])

    @classmethod
    def train(cls, spec: PipelineSpec, rows: Sequence[Row], labels: Sequence[int]) -> OnnxModel:
        """Fit the spec's scikit-learn pipeline on rows/labels and export it to ONNX."""
        cls.check_lengths(rows, labels)
        y = np.asarray([int(bool(label)) for label in labels])
        if len(set(y.tolist())) < 2:
            raise DriftloopError(
                f"model {spec.model.name}: training a {cls.flavor} model needs rows of both labels "
                f"(got {len(y)} rows, all {y[0] if len(y) else 'absent'})"
            )
        columns = model_inputs(spec)
        pipeline = cls.sklearn_pipeline(spec, columns)
        pipeline.fit(_frame(columns, rows), y)
        model = cls(cls._export(pipeline, columns, spec))
        model.sklearn = pipeline
        return model

    @classmethod
    def _export(cls, pipeline: Pipeline, columns: Sequence[ModelInput], spec: PipelineSpec) -> bytes:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType

        initial_types = [
            (c.name, StringTensorType([None, 1]) if c.kind == "category" else FloatTensorType([None, 1]))
            for c in columns
        ]
        onx = convert_sklearn(
            pipeline,
            name=spec.model.name,
            initial_types=initial_types,
            options={id(pipeline.named_steps["estimator"]): {"zipmap": False}},
            target_opset=TARGET_OPSET,
        )
        meta = {
            "driftloop.flavor": cls.flavor,
            "driftloop.estimator": spec.model.estimator,
            "driftloop.columns": json.dumps([[c.name, c.kind] for c in columns]),
        }
        for key, value in meta.items():
            prop = onx.metadata_props.add()
            prop.key, prop.value = key, value
        return onx.SerializeToString()

    def _feeds(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        feeds = {}
        for c in self.columns:
            values = [r.get(c.name) for r in rows]
            if c.kind == "category":
                categories = [v if type(v) is str else as_category(v) for v in values]
                feeds[c.name] = np.array(categories, dtype=object).reshape(-1, 1)
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

    def save(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.filename
        path.write_bytes(self._bytes)
        return [path]

    @classmethod
    def load(cls, directory: str | Path) -> OnnxModel:
        return cls((Path(directory) / cls.filename).read_bytes())
