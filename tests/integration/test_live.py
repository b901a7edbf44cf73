"""The live view (`driftloop up`, `driftloop status --watch`): decisions from the audit topic as they land, the
pulse from real /metrics endpoints, the demo's story from its log; plain lines off a terminal, a panel on one."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from rich.console import Console

from driftloop import kafka
from driftloop.follow import LogFollower
from driftloop.live import LiveView, Look, PlainDisplay, TerminalDisplay
from driftloop.pulse import Pulse, Serving
from driftloop.streams import contracts
from driftloop.streams.worker.metrics import WorkerMetrics
from tests.support.stack import stack_env, start_driftloop, wait_for_line


def test_a_log_follower_returns_each_complete_line_once(tmp_path):
    log = tmp_path / "demo.log"
    log.write_text("from an earlier run\n")
    follower = LogFollower(log, log.stat().st_size)
    assert follower.poll() == []
    with log.open("a") as out:
        out.write("driftloop: demo: one\ndriftloop: demo: tw")
    assert follower.poll() == ["driftloop: demo: one"]
    with log.open("a") as out:
        out.write("o\n")
    assert follower.poll() == ["driftloop: demo: two"]
    assert LogFollower(tmp_path / "not-yet.log").poll() == []


@pytest.mark.integration
def test_the_view_prints_decisions_story_and_pulse_as_plain_lines(kafka_bootstrap, unique, tmp_path):
    audit, drift = f"audit-{unique}", f"drift-{unique}"
    producer = kafka.producer(kafka_bootstrap)
    kafka.ensure_topics(kafka_bootstrap, [audit, drift], 1)
    producer.produce(
        audit,
        contracts.audit(
            actor="trigger",
            action="retrain_triggered",
            model_name="m",
            reason="before the view started",
            at=time.time() - 3600,
        ),
    )
    assert producer.flush(10) == 0
    worker = WorkerMetrics()
    port = worker.serve(0, "127.0.0.1")
    log = tmp_path / "demo.log"
    lines: list[str] = []
    view = LiveView(
        PlainDisplay(lines.append),
        bootstrap=kafka_bootstrap,
        tracking_uri="http://127.0.0.1:1",
        model_name="m",
        audit_topic=audit,
        drift_topic=drift,
        partitions=1,
        metrics_urls=lambda: [f"http://127.0.0.1:{port}/metrics"],
        pulse_every=0.5,
        decisions_since=time.time() - 60,
        story=LogFollower(log),
    )
    try:
        view.open()
        worker.events_predicted(100)
        worker.predictions(3, "champion", 90)
        worker.predictions(4, "canary", 10)
        producer.produce(
            audit,
            contracts.audit(
                actor="promotion",
                action="promoted",
                model_name="m",
                version=4,
                reason="challenger v4 made fewer errors",
            ),
        )
        producer.produce(
            audit,
            contracts.audit(
                actor="promotion", action="canary_waiting", model_name="m", version=4, reason="progress, not a decision"
            ),
        )
        producer.produce(
            drift,
            json.dumps(
                {
                    "at": "2026-12-06T12:00:00Z",
                    "data": {"drifted_share": 0.25, "features": {"amount": {"drifted": True}}},
                    "concept": {"detections": []},
                    "quality": {"flagged": []},
                }
            ).encode(),
        )
        assert producer.flush(10) == 0
        log.write_text(
            "driftloop: demo: drift onset: event 300\ndriftloop: demo: decision: promotion: promoted v4: "
            "the demo's own copy\nsome traceback line\n"
        )
        deadline = time.monotonic() + 20
        while not any(line.startswith("pulse: ") and "events/s" in line for line in lines):
            assert time.monotonic() < deadline, lines
            view.tick()
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not any(line.startswith("drift: ") for line in lines):
            assert time.monotonic() < deadline, lines
            view.tick()
            time.sleep(0.1)
        with log.open("a") as out:
            out.write("driftloop: demo: timeline: /tmp/x.png\n")
    finally:
        view.close()  # shows what came last: a demo's PNG path comes as it ends
        worker.stop_serving()
    assert "decision: promotion: promoted v4: challenger v4 made fewer errors" in lines
    assert not any("before the view started" in line or "canary_waiting" in line for line in lines), lines
    assert lines.count("demo: drift onset: event 300") == 1 and "demo: timeline: /tmp/x.png" == lines[-1]
    assert not any("the demo's own copy" in line or "traceback" in line for line in lines), lines
    pulse = next(line for line in lines if line.startswith("pulse: ") and "events/s" in line)
    assert "registry unreachable" in pulse
    drifted = next(line for line in lines if line.startswith("drift: "))
    assert "drifted share 0.25 (amount)" in drifted

    # `status --watch`: the last decisions made before it started come first, then only new ones
    later: list[str] = []
    watch = LiveView(
        PlainDisplay(later.append),
        bootstrap=kafka_bootstrap,
        tracking_uri="http://127.0.0.1:1",
        model_name="m",
        audit_topic=audit,
        drift_topic=drift,
        partitions=1,
        metrics_urls=lambda: [],
        backlog=5,
    )
    watch.open()
    for _ in range(10):
        watch.tick()
        time.sleep(0.1)
    watch.close()
    assert [line for line in later if line.startswith("decision: ")] == [
        "decision: trigger: retrain_triggered: before the view started",
        "decision: promotion: promoted v4: challenger v4 made fewer errors",
    ]


def test_the_terminal_panel_shows_the_look():
    console = Console(record=True, force_terminal=True, width=140)
    display = TerminalDisplay("driftloop up --demo", console)
    look = Look(
        started=time.time() - 75,
        pulse=Pulse(10.0, 512.4, 0.0412, 3, {"canary": Serving((4,), 0.1), "champion": Serving((3,), 0.9)}),
        workers=(1, 1),
        aliases={"champion": 3, "challenger": 4},
        drift={
            "reports": 12,
            "at": "2026-12-06T12:00:00Z",
            "drifted_share": 0.05,
            "drifted_features": [],
            "concept_detections": 1,
            "quality_flagged": [],
        },
        children={"worker": {"up": True, "restarts": 2}, "control": {"up": False, "restarts": 0}},
    )
    display.open()
    display.decision({"actor": "promotion", "action": "promoted", "version": 4, "reason": "fewer [errors]"})
    display.show(look, new_drift=True)
    display.close()
    screen = console.export_text()
    assert "promotion: promoted v4: fewer [errors]" in screen  # text, never rich markup
    for shown in (
        "driftloop up --demo · watching for 1m15s",
        "512 events/s, lag 3, p99 41.2 ms",
        "canary v4 10%, champion v3 90%",
        "challenger v4, champion v3",
        "drifted share 0.05, concept detections 1, quality ok",
        "worker up (2 restarts), control DOWN",
    ):
        assert shown in screen, screen


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_up_with_the_demo_tells_its_story_on_stdout(tmp_path):
    process = start_driftloop("up", "--demo", "--demo-rate", "400", env=stack_env(tmp_path))
    try:
        wait_for_line(process, "stack is up", timeout=300)
        wait_for_line(process, "driftloop: demo: producing the fraud stream at 400 events/s", timeout=60)
        # the warm-up placeholder's first trigger decision lands within seconds of the first events
        wait_for_line(process, "driftloop: decision: trigger: retrain_declined v1", timeout=60)
        pulse = wait_for_line(process, "driftloop: pulse: ", timeout=60)[-1]
        events_per_second = float(pulse.split("pulse: ", 1)[1].split(" events/s", 1)[0].replace(",", ""))
        assert 200 < events_per_second < 600, pulse
        assert "serving champion v1 100%" in pulse and "registry champion v1" in pulse

        # the same view from another terminal: the decisions made before it started first, then the pulse
        watch = start_driftloop("status", "--watch", "--interval", "1", env=stack_env(tmp_path))
        try:
            wait_for_line(watch, "driftloop: decision: trigger: retrain_declined v1", timeout=60)
            wait_for_line(watch, "driftloop: pulse: ", timeout=60)
        finally:
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=90)
    assert process.returncode == 0 and "SIGTERM received: stopped everything" in out
    assert os.path.exists(tmp_path / "data" / "logs" / "demo.log")
