"""The scikit-learn flavor: more of scikit-learn's classifiers, exported to ONNX and scored by onnxruntime.

It is the ONNX flavor (onnx_flavor.py: the same preprocessing, export and scoring) with a longer list of
estimators, any that skl2onnx converts; `flavor: sklearn` in a spec reads as what it is, a scikit-learn
model. Persisted as `sklearn.onnx`. Retraining trains a candidate of it when it is the spec's model or
`retrain.candidates` names it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from driftloop.models.onnx_flavor import OnnxModel


class SklearnModel(OnnxModel):
    flavor = "sklearn"
    filename = "sklearn.onnx"
    estimator_classes: ClassVar[dict[str, str]] = {
        **OnnxModel.estimator_classes,
        "extra_trees": "sklearn.ensemble:ExtraTreesClassifier",
        "decision_tree": "sklearn.tree:DecisionTreeClassifier",
        "mlp": "sklearn.neural_network:MLPClassifier",
    }
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        **OnnxModel.defaults,
        "decision_tree": {"min_samples_leaf": 20},  # a leaf's probability from at least 20 rows, not 1
        "mlp": {"early_stopping": True},
    }
    unscaled: ClassVar[frozenset[str]] = OnnxModel.unscaled | {"extra_trees", "decision_tree"}
    estimators = tuple(estimator_classes)
