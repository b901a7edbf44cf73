"""`driftloop backtest` in-process: bad tables stop it with one line, an abrupt SEA concept switch is detected
within the issue's 1,000 events, and a seeded run prints the same JSON twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driftloop.cli import main

SPEC = """
name: tiny
events:
  id_field: event_id
  entity: stream
  time_field: event_time
  fields:
    event_id: {type: string}
    stream: {type: string}
    event_time: {type: timestamp}
    x: {type: float}
outcomes: {label: y}
model: {name: tiny, flavor: river, estimator: logistic_regression}
"""
GOOD = [
    ("2024-01-01T00:00:00Z", "0.1", "0"),
    ("2024-01-01T00:01:00Z", "0.9", "1"),
    ("2024-01-01T00:02:00Z", "0.2", "0"),
]


def _table(tmp_path: Path, rows, header=("event_time", "x", "y")) -> Path:
    path = tmp_path / "t.csv"
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("rows", "header", "says"),
    [
        ([*GOOD[:2], ("2024-01-01T00:02:00Z", "0.2", "")], None, "row 2, column 'y': the label is empty"),
        ([*GOOD[:2], ("2024-01-01T00:02:00Z", "0.2", "2")], None, "the label column 'y' has 3 classes (0, 1, 2)"),
        ([GOOD[0], ("2024-01-01T00:01:00Z", "abc", "1")], None, "row 1, column 'x': 'abc' is not a number"),
        ([GOOD[1], GOOD[0]], None, "row 1, column 'event_time': 2024-01-01T00:00:00.000Z is before"),
        ([GOOD[0], GOOD[0]], None, "entity 'all' has two events at 2024-01-01T00:00:00.000Z"),
        ([("2024-01-01T00:00:00Z", "0")], ("event_time", "y"), "missing columns for required fields of spec 'tiny': x"),
    ],
    ids=["missing-label", "three-classes", "not-a-number", "unsorted", "duplicate-time", "field-not-in-table"],
)
def test_a_bad_table_stops_the_backtest_with_one_line_and_no_result(tmp_path, capsys, rows, header, says):
    (tmp_path / "spec.yaml").write_text(SPEC)
    table = _table(tmp_path, rows, header or ("event_time", "x", "y"))
    png = tmp_path / "timeline.png"
    code = main(["backtest", str(table), "--spec", str(tmp_path / "spec.yaml"), "--json", "--png", str(png)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and says in err, err
    assert not png.exists()


def _json(capsys, *argv: str) -> dict:
    assert main(["backtest", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_report_covers_every_event_and_depends_on_the_seed(capsys):
    first = _json(capsys, "river:sea", "--events", "2000", "--drift-at", "1000", "--seed", "7")
    assert first["events"] == 2000 and first["loop"]["predicted"] == 2000
    assert [part["rows"] for part in first["loop"]["deciles"]][:2] == [[0, 200], [200, 400]]
    assert {"never_retrained", "static", "decisions", "drift_points"} <= first.keys()
    assert _json(capsys, "river:sea", "--events", "2000", "--seed", "8")["loop"] != first["loop"]


def test_an_abrupt_sea_switch_is_detected_within_1000_events_and_the_run_repeats_exactly(capsys):
    argv = ("river:sea", "--events", "12000", "--drift-at", "6000", "--seed", "1")
    report = _json(capsys, *argv)
    (point,) = report["drift_points"]
    assert point["event_index"] == 6000
    assert point["delay_events"] is not None and 0 <= point["delay_events"] <= 1000, point
    assert report["loop"]["accuracy"] > 0.8
    assert report["retrainings"] >= 1  # so the repeat covers a retraining, its registry and its audit records
    assert _json(capsys, *argv) == report
