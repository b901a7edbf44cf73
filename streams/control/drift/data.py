"""Data drift: the champion's model inputs in a sliding window, compared with its reference sample by Evidently.

    monitor = DataDriftMonitor(spec, reference, version)     # reference: LoadedModel.reference
    monitor.add(observation["rows"], observation["event_time_max"])
    if monitor.due():
        result = monitor.evaluate()                           # the "data" section of a drift report

The window holds the last `drift.window_events` observed rows. It is evaluated when the first span of
`drift.evaluate_every` is reached since the last evaluation: a count of new rows, or a duration of event
time (the newest event time observed, so a fast replay evaluates after the same days of data as the live
stream), with at least one new row (re-judging an unchanged window would count the same evidence twice
towards "sustained" drift), and only once the window is full.

Per column, Evidently picks the method exactly as its `DataDriftPreset` does (`get_stattest`: with
more than 1,000 reference rows the normed Wasserstein distance for numeric columns and the
Jensen-Shannon distance for categories and bools; with fewer, the K-S test for numeric columns with
more than 5 values, else chi-square, or the Z-test for two values), with the method's threshold from
the spec's `drift.data_thresholds`: Evidently's defaults, except one: the Wasserstein threshold is 0.2
(Evidently's is 0.1). Measured on the demo stream with 1,000-row windows against a 5,000-row reference
(load/benchmarks/drift_calibration.py, 3 stationary streams of 200,000 events): heavy-tailed amounts and
windowed features (autocorrelated: one card's burst moves several rows) reach 0.17 on stationary
windows, so at 0.1 two columns crossed it together often enough for 2, 4 and 9 false "sustained"
runs; at 0.2, none, while a covariate shift scores 0.3 to 0.8. We call the preset's stat tests
directly rather than run `Report([DataDriftPreset()])`, which takes ~1 s here, most of it rendering a
Plotly widget per column: the tests alone take ~40 ms per evaluation, and an evaluation every 500
events at 1,000 events/s must take well under 0.5 s. `html()` renders the full Report, with the same
thresholds, for a retraining run's artifact.

A missing value is not drift here (it is dropped before the test, as Evidently does); the quality
monitor counts missing values.

The reference is the champion's sample saved with its version ("model"). A cold-start River
champion has none; then the monitor builds one from the first `drift.reference_size` rows it
observes ("observed"), but only after a warm-up of the spec's longest feature window in event time
(`warmup_seconds`): until then the windowed features are still filling (a 24 h max starts at the first
amount), so a reference taken earlier would make every later window look drifted.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.calculations.stattests import get_stattest
from evidently.legacy.core import ColumnType
from evidently.presets import DataDriftPreset

from driftloop.models.inputs import rows_to_frame
from driftloop.schema import ModelInput, model_inputs
from driftloop.spec import DataThresholds, PipelineSpec
from driftloop.streams.contracts import iso_time

_P_VALUE_TESTS = {"ks", "chisquare", "z"}  # the p-value tests Evidently can pick; its other picks are distances

Columnar = Mapping[str, Sequence[Any]]


def warmup_seconds(spec: PipelineSpec) -> float:
    """Event time after which every windowed feature has filled: the spec's longest feature window."""
    return max((f.window.size for f in spec.features if f.window is not None), default=0.0)


class DataDriftMonitor:
    def __init__(self, spec: PipelineSpec, reference: pd.DataFrame, version: int):
        self.spec = spec
        self.version = version
        self.columns = model_inputs(spec)
        self.names = [c.name for c in self.columns]
        size = spec.drift.window_events
        self._window: dict[str, deque[Any]] = {name: deque(maxlen=size) for name in self.names}
        self._batches: deque[tuple[int, float]] = deque()  # (rows, event_time_max) of the batches in the window
        self._since_evaluation = 0
        self._latest: float | None = None  # the newest event time observed
        self._evaluated_at: float | None = None  # the newest event time at the last evaluation (or the first seen)
        self.reference_source = "model" if len(reference) else "observed"
        self._reference: dict[str, pd.Series] | None = None
        self._reference_rows = 0
        if len(reference):
            self._set_reference(reference)
        self._collected: dict[str, list[Any]] = {name: [] for name in self.names}
        self._warm_from: float | None = None  # event time from which observed rows may join the reference

    @property
    def warm_from(self) -> float | None:
        """Event time from which every feature window is full (first observed event + the longest window)."""
        return self._warm_from

    # -- feeding -------------------------------------------------------------------------------------

    def add(self, rows: Columnar, event_time_max: float) -> None:
        """One scoring batch: its model-input rows, columnar, and the latest event time among them."""
        count = len(rows[self.names[0]]) if self.names else 0
        if not count:
            return
        for name in self.names:
            self._window[name].extend(rows[name])
        self._batches.append((count, event_time_max))
        if event_time_max is not None:
            self._latest = event_time_max if self._latest is None else max(self._latest, event_time_max)
        if self._evaluated_at is None:
            self._evaluated_at = self._latest
        held = sum(n for n, _ in self._batches)
        while self._batches and held - self._batches[0][0] >= self.spec.drift.window_events:
            held -= self._batches.popleft()[0]
        self._since_evaluation += count
        if self._reference is None:
            self._collect_reference(rows, count, event_time_max)

    def _collect_reference(self, rows: Columnar, count: int, event_time_max: float) -> None:
        if self._warm_from is None:
            self._warm_from = event_time_max + warmup_seconds(self.spec)
        if event_time_max < self._warm_from:
            return
        take = min(count, self.spec.drift.reference_size - self._reference_rows)
        for name in self.names:
            self._collected[name].extend(rows[name][:take])
        self._reference_rows += take
        if self._reference_rows >= self.spec.drift.reference_size:
            self._set_reference(_frame(self.columns, self._collected))
            self._collected = {}

    def _set_reference(self, reference: pd.DataFrame) -> None:
        self._reference = {
            name: _values(reference[name]) if name in reference.columns else _values(pd.Series([]))
            for name in self.names
        }
        self._reference_rows = len(reference)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def window_events(self) -> int:
        return len(self._window[self.names[0]]) if self.names else 0

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    def ready(self) -> bool:
        """A reference and a full window: evaluate() can compare them."""
        return self._reference is not None and self.window_events >= self.spec.drift.window_events

    def due(self) -> bool:
        """Time for an evaluation (see the module docstring), whether or not the reference is ready yet."""
        if self.window_events < self.spec.drift.window_events or not self._since_evaluation:
            return False
        spanned = 0.0 if self._latest is None or self._evaluated_at is None else self._latest - self._evaluated_at
        return any(every.reached(self._since_evaluation, spanned) for every in self.spec.drift.evaluate_every)

    def window_info(self) -> dict[str, Any]:
        """The window for a drift report; times are the scoring batches' latest event times (ISO)."""
        times = [t for _, t in self._batches]
        return {
            "events": self.window_events,
            "first_event_time": iso_time(min(times)) if times else None,
            "last_event_time": iso_time(max(times)) if times else None,
        }

    def current_rows(self) -> dict[str, list[Any]]:
        """The window's rows, columnar (JSON-able), for a retrain request."""
        return {name: list(values) for name, values in self._window.items()}

    # -- evaluating ----------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """The data section of a drift report (documented in streams/control/drift/report.py)."""
        self._since_evaluation = 0
        self._evaluated_at = self._latest
        base = {
            "reference": self.reference_source,
            "reference_version": self.version,
            "reference_rows": self._reference_rows,
            "window_events": self.window_events,
            "threshold_share": self.spec.drift.drifted_share,
        }
        if not self.ready():
            status = "collecting_reference" if self._reference is None else "filling_window"
            return {
                "status": status,
                **base,
                "drifted_share": None,
                "drifted": False,
                "drifted_columns": [],
                "features": {},
            }
        started = time.perf_counter()
        reference = self._reference
        assert reference is not None  # ready() says so
        current = _frame(self.columns, self._window)
        features = {
            c.name: column_drift(c, reference[c.name], _values(current[c.name]), self.spec.drift.data_thresholds)
            for c in self.columns
        }
        tested = [name for name, result in features.items() if result["method"] is not None]
        drifted = [name for name in tested if features[name]["drifted"]]
        share = len(drifted) / len(tested) if tested else 0.0
        return {
            "status": "evaluated",
            **base,
            "drifted_share": round(share, 4),
            "drifted": bool(tested) and share >= self.spec.drift.drifted_share,
            "drifted_columns": drifted,
            "features": features,
            "seconds": round(time.perf_counter() - started, 4),
        }


def column_drift(
    column: ModelInput, reference: pd.Series, current: pd.Series, thresholds: DataThresholds
) -> dict[str, Any]:
    """One column's verdict with the method Evidently's DataDriftPreset would pick, at the spec's threshold for it."""
    if reference.empty or current.empty:
        where = "reference" if reference.empty else "window"
        return {
            "method": None,
            "score": None,
            "threshold": None,
            "drifted": False,
            "skipped": f"no values in the {where}",
        }
    kind = ColumnType.Numerical if column.kind == "numeric" else ColumnType.Categorical
    stattest = get_stattest(reference, current, kind, None)
    result = stattest(reference, current, kind, getattr(thresholds, stattest.name))
    score = float(result.drift_score)
    return {
        "method": stattest.name,
        "method_name": stattest.display_name,
        "score_kind": "p_value" if stattest.name in _P_VALUE_TESTS else "distance",
        "score": round(score, 6) if math.isfinite(score) else None,
        "threshold": result.actual_threshold,
        "drifted": bool(result.drifted),
    }


def html(spec: PipelineSpec, reference: pd.DataFrame, current: pd.DataFrame) -> str:
    """Evidently's full data-drift HTML report (DataDriftPreset) of current against reference.

    Both frames are model-input rows shaped like `rows_to_frame` (a version's reference sample, a
    retrain request's current rows); uses the same thresholds as DataDriftMonitor.evaluate.
    """
    columns = model_inputs(spec)
    definition = DataDefinition(
        numerical_columns=[c.name for c in columns if c.kind == "numeric"],
        categorical_columns=[c.name for c in columns if c.kind != "numeric"],
    )
    thresholds = {}
    for c in columns:
        verdict = column_drift(c, _values(reference[c.name]), _values(current[c.name]), spec.drift.data_thresholds)
        if verdict["method"] is not None:
            thresholds[c.name] = verdict["threshold"]
    report = Report(
        [
            DataDriftPreset(
                columns=[c.name for c in columns],
                drift_share=spec.drift.drifted_share,
                per_column_threshold=thresholds or None,
            )
        ]
    )
    snapshot = report.run(
        Dataset.from_pandas(_evidently_frame(columns, current), data_definition=definition),
        Dataset.from_pandas(_evidently_frame(columns, reference), data_definition=definition),
    )
    return snapshot.get_html_str(as_iframe=False)


def _frame(columns: Sequence[ModelInput], columnar: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """Columnar rows as the typed frame rows_to_frame makes (the shape of reference samples)."""
    names = [c.name for c in columns]
    return rows_to_frame(columns, [dict(zip(names, values)) for values in zip(*(columnar[n] for n in names))])


def _values(series: pd.Series) -> pd.Series:
    """A column as Evidently's tests take it: finite values only; categories and bools as plain objects."""
    if pd.api.types.is_float_dtype(series):
        return series[np.isfinite(series.to_numpy())].reset_index(drop=True)
    return series.dropna().astype(object).reset_index(drop=True)


def _evidently_frame(columns: Sequence[ModelInput], frame: pd.DataFrame) -> pd.DataFrame:
    """Evidently's Report wants plain object categories (not pandas' nullable boolean)."""
    out = frame[[c.name for c in columns]].copy()
    for c in columns:
        if c.kind != "numeric":
            out[c.name] = out[c.name].astype(object).where(out[c.name].notna(), None)
    return out
