"""The scripted demo (`python -m driftloop.load.demo`, what `driftloop up --demo` runs) as a process on a real
broker: its options, the timeline PNG it writes when no promotion comes, and what it does when one comes.

No stack runs here (the full unattended demo needs the whole loop): the broker gets the demo's stream, and
the test itself plays the promotion controller by writing the "promoted" audit record."""

import os
import signal
import subprocess
import sys
import time

import pytest

from driftloop import kafka
from driftloop.load import demo
from driftloop.load.run_records import read_between
from driftloop.streams import contracts
from tests.support.stack import wait_for_line

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _environment(tmp_path, unique):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DRIFTLOOP_") and k not in ("KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_TRACKING_URI")
    }
    env.update(
        DRIFTLOOP_DATA_DIR=str(tmp_path / "data"),
        DRIFTLOOP_PARTITIONS="1",
        **{
            f"DRIFTLOOP_TOPIC_{name.upper()}": f"demo-{name}-{unique}"
            for name in ("events", "outcomes", "labeled", "audit", "drift")
        },
    )
    return env


def _demo(*args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "driftloop.load.demo", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_help_lists_the_options_without_loading_the_pipeline():
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "driftloop.load.demo", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for option in ("--rate", "--onset", "--timeout", "--mlflow-url", "--data-dir", "--fraud-rate", "--label-delay"):
        assert option in result.stdout
    assert time.monotonic() - started < 20  # no Evidently, Feast or MLflow import just to print help


def test_the_defaults_are_the_calibrated_demo_stream():
    from driftloop.load.benchmarks import drift_calibration  # imports Evidently: only here

    assert demo.DEMO_STREAM == drift_calibration.DEMO_STREAM
    assert (demo.LABEL_DELAY, demo.ONSET) == (drift_calibration.LABEL_DELAY, drift_calibration.ONSET)
    args = demo.build_parser().parse_args([])
    assert (args.rate, args.onset, args.timeout) == (1000.0, drift_calibration.ONSET, 600.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rate", "0"], "argument --rate: '0' must be more than 0"),
        (["--fraud-rate", "0.7"], "argument --fraud-rate: '0.7' must be at most 0.5"),
        (["--timeout", "soon"], "argument --timeout: 'soon' is not a float"),
    ],
)
def test_a_bad_option_value_is_refused_by_name(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_negative_counts_are_refused(capsys):
    assert demo.main(["--onset", "-5"]) == 2
    assert "--onset, --label-delay and --after-promotion cannot be negative" in capsys.readouterr().err


def test_without_a_broker_it_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DRIFTLOOP_DATA_DIR", str(tmp_path))
    assert demo.main([]) == 2
    assert "no broker: pass --bootstrap, set KAFKA_BOOTSTRAP_SERVERS or start `driftloop up`" in capsys.readouterr().err


@pytest.mark.integration
def test_without_a_promotion_it_writes_the_timeline_and_exits_1(kafka_bootstrap, unique, tmp_path):
    env = _environment(tmp_path, unique)
    process = _demo(
        "--bootstrap",
        kafka_bootstrap,
        "--rate",
        "2000",
        "--onset",
        "500",
        "--timeout",
        "2",
        "--mlflow-url",
        "sqlite:///nowhere.db",
        env=env,
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, out + err
    png = tmp_path / "data" / "demo-timeline.png"
    assert (
        f"no retrained model was promoted within 2 s of the drift onset; the timeline shows how far the loop "
        f"got: {png}" in err
    )
    assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 10_000
    assert f"timeline: {png}" in out and "detected not yet" in out
    assert "experiment 'card_fraud'" in out and "registered model 'card_fraud'" in out
    # The stream went out: the onset event, and more after it while the demo waited.
    events = kafka.read_topic(kafka_bootstrap, env["DRIFTLOOP_TOPIC_EVENTS"])
    assert len(events) > 500 + 2 * 2000 * 0.5


@pytest.mark.integration
def test_after_a_promotion_it_writes_the_timeline_and_streams_on_until_sigterm(kafka_bootstrap, unique, tmp_path):
    env = _environment(tmp_path, unique)
    process = _demo(
        "--bootstrap",
        kafka_bootstrap,
        "--rate",
        "1000",
        "--onset",
        "300",
        "--after-promotion",
        "1",
        "--mlflow-url",
        "http://127.0.0.1:1",
        env=env,
    )
    try:
        wait_for_line(process, "drift onset: event 300", timeout=30)
        producer = kafka.producer(kafka_bootstrap)
        producer.produce(
            env["DRIFTLOOP_TOPIC_AUDIT"],
            contracts.audit(
                actor="promotion",
                action="promoted",
                model_name="card_fraud",
                reason="challenger v2 made fewer errors",
                version=2,
            ),
        )
        assert producer.flush(10) == 0
        lines = wait_for_line(process, "the drifted stream goes on", timeout=60)
        text = "".join(lines)
        png = tmp_path / "data" / "demo-timeline.png"
        assert "promotion: promoted v2: challenger v2 made fewer errors" in text
        assert f"timeline: {png}" in text and png.read_bytes().startswith(PNG_SIGNATURE)
        assert "MLflow UI: model versions at http://127.0.0.1:1/#/models/card_fraud" in text
        # Still streaming: events keep arriving after the timeline was written.
        after_timeline = time.time()
        time.sleep(1)
        assert read_between(kafka_bootstrap, env["DRIFTLOOP_TOPIC_EVENTS"], after_timeline, time.time(), bytes)
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, _err = process.communicate(timeout=15)
        assert process.returncode == 0
        assert "SIGTERM received: stopped" in out
        assert time.monotonic() - stopping < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
