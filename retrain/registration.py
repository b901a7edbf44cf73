"""One MLflow run per retraining: what it learned from, how every model did, and the registered winner.

`record(...)` logs, in a single run of experiment `spec.name` (via `registry.register`, which also logs the
model, its reference sample, signature and checksum and registers the new version):

- params: request id, reason, train_from, the window's first/last event time, rows / training / holdout
  rows, the candidates and the winner, gate metric and margin, the champion compared with, feature view name
  and version, code version (package version + git commit when known) and the dataset fingerprint;
- metrics: `<candidate or "champion">.<accuracy|roc_auc|log_loss>` on the holdout, rows taken from Feast
  and from the labeled records, Feast/labeled mismatches, the share of drifted columns, stage seconds;
- artifacts: `drift_report.json` (the request's drift report) and `data_drift.html`, an Evidently
  data-drift report of the request's drift window (`current_rows`; the holdout when it sent none) against
  the champion's reference sample (the training part when there is no champion or it has no sample).

Version tags: `driftloop.origin=retrain`, `driftloop.request_id`, `driftloop.dataset_fingerprint`,
`driftloop.gate=passed|rejected` and, when rejected, `driftloop.rejected=<reason>`: set when the version is
created, so a crash can never leave a rejected version looking undecided.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import driftloop
from driftloop.features.feast.repo import feature_view_name, feature_view_version
from driftloop.models.bootstrap import ORIGIN_TAG
from driftloop.models.registry import ModelVersionInfo, register
from driftloop.retrain.train import Candidate
from driftloop.schema import model_inputs
from driftloop.signing import SigningKey
from driftloop.spec import PipelineSpec

_LOG = logging.getLogger("driftloop.retrain.registration")
REQUEST_TAG = "driftloop.request_id"
GATE_TAG = "driftloop.gate"  # "passed" | "rejected"
REJECTED_TAG = "driftloop.rejected"  # the reason
FINGERPRINT_TAG = "driftloop.dataset_fingerprint"
DRIFT_REPORT_FILE = "drift_report.json"
DATA_DRIFT_FILE = "data_drift.html"


def code_version() -> str:
    """driftloop's package version, plus the git commit of the checkout it runs from when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(driftloop.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return driftloop.__version__
    return f"{driftloop.__version__}+g{commit}"


def data_drift_report(spec: PipelineSpec, reference: pd.DataFrame, current: pd.DataFrame, path: Path) -> float:
    """Write Evidently's data-drift report (HTML) of current vs reference; returns the share of drifted columns."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = model_inputs(spec)
    definition = DataDefinition(
        numerical_columns=[c.name for c in columns if c.kind == "numeric"],
        categorical_columns=[c.name for c in columns if c.kind != "numeric"],
    )
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    snapshot.save_html(str(path))
    for metric in snapshot.dict()["metrics"]:
        if metric["metric_name"].startswith("DriftedColumnsCount"):
            return float(metric["value"]["share"])
    raise ValueError("Evidently's DataDriftPreset reported no DriftedColumnsCount")


def record(
    spec: PipelineSpec,
    *,
    tracking_uri: str,
    key: SigningKey,
    request: Mapping[str, Any],
    winner: Candidate,
    passed: bool,
    reason: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    reference_rows: Sequence[Mapping[str, Any]],
    drift_reference: pd.DataFrame,
    drift_current: pd.DataFrame,
    fingerprint: str,
    drift_html: bool = True,
) -> ModelVersionInfo:
    """Log the run and register `winner` (see the module docstring); returns the new version. Without
    `drift_html` the Evidently HTML report is left out (seconds per run; the backtest reads no artifacts)."""
    request_id = str(request["request_id"])
    tags = {
        ORIGIN_TAG: "retrain",
        REQUEST_TAG: request_id,
        FINGERPRINT_TAG: fingerprint,
        GATE_TAG: "passed" if passed else "rejected",
    }
    if not passed:
        tags[REJECTED_TAG] = reason
    all_params = {
        "request_id": request_id,
        "reason": request.get("reason"),
        "train_from": request.get("train_from"),
        "request_champion_version": request.get("champion_version"),
        "feature_view": feature_view_name(spec),
        "feature_view_version": feature_view_version(spec),
        "code_version": code_version(),
        "dataset_fingerprint": fingerprint,
        "gate": reason,
        **params,
    }
    all_metrics = {key: value for key, value in metrics.items() if value is not None}
    with tempfile.TemporaryDirectory(prefix="driftloop-retrain-") as tmp:
        report_json = Path(tmp) / DRIFT_REPORT_FILE
        report_json.write_text(json.dumps(request.get("drift_report"), indent=2, default=str))
        artifacts = [report_json]
        html = Path(tmp) / DATA_DRIFT_FILE
        if drift_html:
            try:
                all_metrics["data_drift_share"] = data_drift_report(spec, drift_reference, drift_current, html)
                artifacts.append(html)
            except Exception as exc:  # the report documents the run; it must not stop a retraining
                _LOG.warning(
                    "request %s: the Evidently data-drift report failed: %s: %s", request_id, type(exc).__name__, exc
                )
                all_params["data_drift_report"] = f"failed: {type(exc).__name__}: {exc}"[:500]
        else:
            all_params["data_drift_report"] = "not written (backtest)"
        return register(
            winner.model,
            winner.spec,
            tracking_uri=tracking_uri,
            reference_rows=reference_rows,
            metrics=all_metrics,
            params=all_params,
            tags=tags,
            run_name=f"{spec.model.name}-retrain",
            artifacts=artifacts,
            key=key,
        )
