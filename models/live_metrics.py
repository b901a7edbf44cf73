"""Model quality on live traffic: rolling-window metrics over joined outcomes, per model version.

Each version keeps the last `window` (label, probability) pairs, and a snapshot computes its metrics from
them with NumPy: accuracy, precision, recall and F1 of the decisions (probability >= threshold), log loss,
and ROC AUC, exactly (the Mann-Whitney definition, ties counted 1/2: tree models tie a lot). Nothing here
imports River, which would cost a worker serving an ONNX model ~150 MB (River pulls in pandas and SciPy).

Where the values can differ from scikit-learn's on the same window (the definitions River's metrics use,
which these were before):
- precision, recall, F1 with a zero denominator (no predicted / actual positives) are 0.0, as with
  scikit-learn's `zero_division=0`;
- log loss clamps probabilities to [1e-15, 1 - 1e-15], scikit-learn to [eps, 1 - eps] with the
  float64 eps (2.2e-16), so only probabilities within 1e-15 of 0 or 1 give different losses;
- ROC AUC is None while the window holds only one class (scikit-learn warns and returns NaN).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

_CLAMP = 1e-15


class _VersionWindow:
    def __init__(self, window: int):
        self.pairs: deque[tuple[bool, float]] = deque(maxlen=window)

    def snapshot(self, threshold: float) -> dict[str, float | int | None]:
        labels = np.fromiter((label for label, _ in self.pairs), dtype=bool, count=len(self.pairs))
        probas = np.fromiter((proba for _, proba in self.pairs), dtype=float, count=len(self.pairs))
        decisions = probas >= threshold
        true_positives = int((labels & decisions).sum())
        predicted, actual = int(decisions.sum()), int(labels.sum())
        precision = true_positives / predicted if predicted else 0.0
        recall = true_positives / actual if actual else 0.0
        clamped = np.clip(probas, _CLAMP, 1 - _CLAMP)
        losses = -np.where(labels, np.log(clamped), np.log1p(-clamped))
        return {
            "accuracy": float((labels == decisions).mean()),
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "log_loss": float(losses.mean()),
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
        window.pairs.append((bool(y_true), proba))

    def update_many(self, version: int | str, y_true: Iterable[int], proba: Iterable[float]) -> None:
        """Joined outcomes of one version, oldest first."""
        for label, probability in zip(y_true, proba, strict=True):
            self.update(version, label, probability)

    def forget(self, version: int | str) -> None:
        """Drop a version that no longer serves (rolled back, replaced), so it leaves the snapshot."""
        self._versions.pop(version, None)

    def snapshot(self) -> dict[int | str, dict[str, float | int | None]]:
        """{version: {accuracy, precision, recall, f1, log_loss, roc_auc, samples}} over each window."""
        return {version: window.snapshot(self.threshold) for version, window in self._versions.items()}
