"""Shared test helpers: the Grafana dashboard's queries."""

from __future__ import annotations

import json

from tests.support import REPO


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every dashboard in deploy/grafana/dashboards/."""
    return [
        (panel["title"], target["expr"])
        for file in sorted((REPO / "deploy/grafana/dashboards").glob("*.json"))
        for panel in json.loads(file.read_text()).get("panels", [])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
