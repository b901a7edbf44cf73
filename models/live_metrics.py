"""Model quality on live traffic: rolling-window metrics over joined outcomes, per model version.

Each version keeps the last `window` (label, probability) pairs. Accuracy, precision, recall and F1
are river metrics reading one confusion matrix that `river.utils.Rolling` keeps to the window (it
reverts the pair leaving the window); log loss is a `Rolling(river.metrics.LogLoss)`. ROC AUC is
computed exactly from the window's pairs on `snapshot()`: river's `ROCAUC` reverts but only
approximates the curve on a fixed grid of thresholds, and its exact `RollingROCAUC` scores tied
probabilities differently from the usual Mann-Whitney definition (tree models tie a lot).

Where the values can differ from scikit-learn's on the same window (river's definitions):
- precision, recall, F1 with a zero denominator (no predicted / actual positives) are 0.0, as with
  scikit-learn's `zero_division=0`;
- log loss clamps probabilities to [1e-15, 1 - 1e-15], scikit-learn to [eps, 1 - eps] with the
  float64 eps (2.2e-16), so only probabilities within 1e-15 of 0 or 1 give different losses;
- ROC AUC is None while the window holds only one class (scikit-learn warns and returns NaN).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
from river import metrics, utils


class _VersionWindow:
    def __init__(self, window: int):
        self.confusion = utils.Rolling(metrics.ConfusionMatrix, window_size=window)
        self.accuracy = metrics.Accuracy(cm=self.confusion.obj)
        self.precision = metrics.Precision(cm=self.confusion.obj)
        self.recall = metrics.Recall(cm=self.confusion.obj)
        self.f1 = metrics.F1(cm=self.confusion.obj)
        self.log_loss: Any = utils.Rolling(metrics.LogLoss, window_size=window)
        self.pairs: deque[tuple[bool, float]] = deque(maxlen=window)

    def update(self, label: bool, proba: float, decision: bool) -> None:
        self.confusion.update(label, decision)
        self.log_loss.update(label, proba)
        self.pairs.append((label, proba))

    def snapshot(self) -> dict[str, float | int | None]:
        return {
            "accuracy": self.accuracy.get(),
            "precision": self.precision.get(),
            "recall": self.recall.get(),
            "f1": self.f1.get(),
            "log_loss": self.log_loss.get(),
            "roc_auc": roc_auc(self.pairs),
            "samples": len(self.pairs),
        }


def roc_auc(pairs: Iterable[tuple[bool, float]]) -> float | None:
    """Exact ROC AUC of (label, score) pairs: P(score of a positive > score of a negative), ties 1/2.

    None when the pairs hold only one class, where the AUC is undefined.
    """
    pairs = list(pairs)
    labels = np.array([label for label, _ in pairs], dtype=bool)
    scores = np.array([score for _, score in pairs], dtype=float)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    distinct, index = np.unique(scores, return_inverse=True)  # distinct scores, ascending
    positives_at = np.bincount(index[labels], minlength=len(distinct))
    negatives_at = np.bincount(index[~labels], minlength=len(distinct))
    negatives_below = np.cumsum(negatives_at) - negatives_at
    wins = (positives_at * (negatives_below + 0.5 * negatives_at)).sum()
    return float(wins / (positives * negatives))


class LiveMetrics:
    """Rolling accuracy, precision, recall, F1, log loss and ROC AUC of each model version.

    `threshold` turns a probability into the decision (positive when proba >= threshold, as in the
    predictions topic); pass the spec's `model.threshold`.
    """

    def __init__(self, threshold: float, window: int = 1000):
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must lie strictly between 0 and 1, not {threshold}")
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.threshold, self.window = threshold, window
        self._versions: dict[int | str, _VersionWindow] = {}

    def update(self, version: int | str, y_true: int, proba: float) -> None:
        """One joined outcome: the true 0/1 label and the probability the version predicted."""
        window = self._versions.get(version)
        if window is None:
            window = self._versions[version] = _VersionWindow(self.window)
        window.update(bool(y_true), proba, proba >= self.threshold)

    def update_many(self, version: int | str, y_true: Iterable[int], proba: Iterable[float]) -> None:
        """Joined outcomes of one version, oldest first."""
        for label, probability in zip(y_true, proba, strict=True):
            self.update(version, label, probability)

    def forget(self, version: int | str) -> None:
        """Drop a version that no longer serves (rolled back, replaced), so it leaves the snapshot."""
        self._versions.pop(version, None)

    def snapshot(self) -> dict[int | str, dict[str, float | int | None]]:
        """{version: {accuracy, precision, recall, f1, log_loss, roc_auc, samples}} over each window."""
        return {version: window.snapshot() for version, window in self._versions.items()}
