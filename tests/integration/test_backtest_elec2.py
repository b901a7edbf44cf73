"""`driftloop backtest` end to end on a slice of elec2 (the shared real drifting stream): the whole loop runs,
retrains, and reports every figure the docs promise, as JSON and as a PNG timeline."""

import json

import pytest

from driftloop.cli import main
from tests.support import REPO

ELEC2 = REPO.parent / "shared" / "data" / "elec2.csv"
ELEC2_SPEC = REPO / "driftloop" / "specs" / "elec2.yaml"


@pytest.mark.skipif(not ELEC2.is_file(), reason=f"{ELEC2} (the shared elec2 dataset, ../shared) is not here")
def test_a_slice_of_elec2_reports_the_loop_its_baselines_and_its_decisions(tmp_path, capsys):
    png = tmp_path / "timeline.png"
    argv = ["backtest", str(ELEC2), "--spec", str(ELEC2_SPEC), "--limit", "5000", "--drift-points", "2000"]
    assert main([*argv, "--retrain-cost", "1d", "--json", "--png", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["events"] == 5000 and report["loop"]["predicted"] == 5000
    assert report["label_delay"] == {"events": 1} and report["retrain_cost_seconds"] == 86400
    for figures in (report["loop"], report["never_retrained"], report["static"]):
        assert 0 < figures["accuracy"] <= 1 and figures["log_loss"] > 0 and figures["roc_auc"] is not None
        assert len(figures["deciles"]) == 10
    assert report["loop"]["accuracy"] > 0.85  # the shipped spec's online model on elec2's first 5,000 periods
    assert report["static"]["accuracy"] < report["never_retrained"]["accuracy"]  # a cold model that never learns
    assert sum(v["events"] for v in report["loop"]["variants"]) == 5000

    # drift was acted on: a retraining triggered, carried out a day of event time later, and decided
    actions = [d["action"] for d in report["decisions"]]
    assert "retrain_triggered" in actions and "registered" in actions
    triggered = next(d for d in report["decisions"] if d["action"] == "retrain_triggered")
    started = next(d for d in report["decisions"] if d["action"] == "started")
    assert started["event_index"] - triggered["event_index"] >= 48  # 48 half-hour periods: the retraining cost
    assert all({"event_index", "event_time", "actor", "action", "reason"} <= d.keys() for d in report["decisions"])
    (point,) = report["drift_points"]
    assert point["event_index"] == 2000 and point["detected_at"] is not None
    assert png.stat().st_size > 10_000
