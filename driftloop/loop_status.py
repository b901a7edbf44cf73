"""The adaptive loop's part of `driftloop status`: who serves, what drift looks like, what was decided.

Read from the sources of truth rather than from a process: the aliases from the MLflow registry, the
latest report from the `drift` topic and the latest decisions from the `audit` topic. So it works
from any machine that reaches the broker and MLflow, whichever process made the decisions.
"""

from __future__ import annotations

import json
from typing import Any

from driftloop import kafka
from driftloop.models.registry import aliases  # over HTTP for a server; MLflow's client (seconds) otherwise
from driftloop.settings import Settings
from driftloop.spec import PipelineSpec


def collect_loop(
    settings: Settings, spec: PipelineSpec, bootstrap: str, tracking_uri: str, decisions: int = 8
) -> dict[str, Any]:
    try:
        current = aliases(spec.model.name, tracking_uri=tracking_uri)
        registry_error = None
    except Exception as exc:  # the status of everything else is still worth printing
        current, registry_error = {}, str(exc).splitlines()[0]
    reports = kafka.read_topic(bootstrap, settings.topic_drift)
    audit = [json.loads(value) for value in kafka.read_topic(bootstrap, settings.topic_audit)]
    # "nothing changed" progress records would crowd out the decisions
    audit = [record for record in audit if record.get("action") not in ("canary_waiting",)]
    last_report = json.loads(reports[-1]) if reports else None
    return {
        "model": spec.model.name,
        "aliases": current,
        "registry_error": registry_error,
        "drift": drift_summary(last_report, len(reports)),
        "decisions": audit[-decisions:],
    }


def drift_summary(report: dict[str, Any] | None, count: int) -> dict[str, Any] | None:
    if report is None:
        return None
    data = report.get("data") or {}
    concept = report.get("concept") or {}
    quality = report.get("quality") or {}
    return {
        "reports": count,
        "at": report.get("at"),
        "champion_version": report.get("champion_version"),
        "drifted_share": data.get("drifted_share"),
        "data_drifted": data.get("drifted"),
        "drifted_features": sorted(name for name, f in (data.get("features") or {}).items() if f.get("drifted")),
        "concept_detections": len(concept.get("detections") or ()),
        "quality_flagged": quality.get("flagged"),
        "quality": {k: v for k, v in quality.items() if k != "flagged"},
    }


def decision_line(record: dict[str, Any]) -> str:
    """One audit record as one line: who decided what, on which version, and why."""
    version = f" v{record['version']}" if record.get("version") is not None else ""
    return f"{record.get('actor')}: {record.get('action')}{version}: {record.get('reason')}"


def drift_line(drift: dict[str, Any] | None) -> str:
    """The last drift evaluation (a `drift_summary`) as one line."""
    if drift is None:
        return "no report yet"
    share = drift["drifted_share"]
    return (
        f"{drift['reports']} reports; last at {drift['at']}: drifted share "
        f"{'-' if share is None else format(share, '.2f')}"
        + (f" ({', '.join(drift['drifted_features'])})" if drift["drifted_features"] else "")
        + f", concept detections {drift['concept_detections']}, quality "
        + ("FLAGGED" if drift["quality_flagged"] else "ok")
    )


def render_loop(loop: dict[str, Any]) -> str:
    versions = loop["aliases"]
    serving = ", ".join(f"{alias} v{version}" for alias, version in sorted(versions.items(), key=lambda kv: kv[0]))
    lines = [
        f"registry    {loop['model']}: "
        + (serving or "no aliases")
        + (f" (unreachable: {loop['registry_error']})" if loop["registry_error"] else ""),
        f"drift       {drift_line(loop['drift'])}",
    ]
    lines += [f"decision    {record['at']} {decision_line(record)}" for record in loop["decisions"]]
    if not loop["decisions"]:
        lines.append("decision    none yet")
    return "\n".join(lines)
