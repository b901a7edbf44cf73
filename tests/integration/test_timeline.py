"""The run timeline against a real broker: a scripted run's labeled, audit and drift records go to Kafka with
the wall times they would have had; the facts must be those times and accuracies, and the PNG a real chart."""

import json
import struct
import time

import numpy as np
import pytest
from matplotlib import image

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.load.timeline import read_run, rolling_accuracy, timeline_facts, write_timeline
from driftloop.streams import contracts
from driftloop.streams.contracts import iso_time

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _settings(unique):
    return settings_module.load(
        environ={
            "DRIFTLOOP_TOPIC_LABELED": f"tl-labeled-{unique}",
            "DRIFTLOOP_TOPIC_AUDIT": f"tl-audit-{unique}",
            "DRIFTLOOP_TOPIC_DRIFT": f"tl-drift-{unique}",
        }
    )


def _labeled(index, predicted_at, version, variant, correct):
    label = index % 2
    return json.dumps(
        {
            "contract": 1,
            "event_id": f"e-{index}",
            "entity": f"u-{index % 7}",
            "event_time": iso_time(predicted_at - 3600),
            "score": 0.9 if label else 0.1,
            "decision": label if correct else 1 - label,
            "label": label,
            "model_name": "card_fraud",
            "model_version": version,
            "variant": variant,
            "features": {"amount": 1.0},
            "outcome_time": iso_time(predicted_at),
            "predicted_at": iso_time(predicted_at),
            "joined_at": iso_time(predicted_at + 0.5),
            "latency_ms": 2.0,
        }
    ).encode()


def _audit(actor, action, at, version, **details):
    return contracts.audit(
        actor=actor,
        action=action,
        model_name="card_fraud",
        reason=f"{action} for the test",
        version=version,
        details=details,
        at=at,
    )


def _drift_report(at, share, detections=()):
    return json.dumps(
        {
            "contract": 1,
            "at": iso_time(at),
            "model_name": "card_fraud",
            "champion_version": 1,
            "data": {"status": "evaluated", "drifted_share": share},
            "concept": {"detections": list(detections)},
        }
    ).encode()


def test_timeline_facts_and_png_come_from_the_runs_records(kafka_bootstrap, unique, tmp_path):
    settings = _settings(unique)
    topics = [settings.topic_labeled, settings.topic_audit, settings.topic_drift]
    kafka.ensure_topics(kafka_bootstrap, topics, partitions=2)
    # The run: t0 .. t0 + 100 s, written with the wall times it would have had; whole seconds, so that the
    # records' millisecond times say exactly when each phase began.
    t0 = float(int(time.time()) - 200)
    since, until, onset = t0, t0 + 101, t0 + 40  # outcomes are written half a second late
    producer = kafka.producer(kafka_bootstrap)

    def send(topic, value, at):
        producer.produce(topic, value=value, key=b"card_fraud", timestamp=int(at * 1000))

    # Champion v1: one error in 20 before the onset, one in 4 after; canary v2 from 60 s; v2 champion from 70 s.
    # Ten outcomes a second, each written half a second after its prediction, as the join does.
    index = 0
    for tenth in range(0, 1000):
        at = t0 + tenth / 10
        if at < t0 + 70:
            send(
                settings.topic_labeled,
                _labeled(index, at, 1, "champion", correct=tenth % (20 if at < onset else 4) != 0),
                at + 0.5,
            )
            index += 1
        else:
            send(settings.topic_labeled, _labeled(index, at, 2, "champion", correct=tenth % 10 != 0), at + 0.5)
            index += 1
        if t0 + 60 <= at < t0 + 70 and tenth % 2 == 0:  # canary: 5 a second, always right
            send(settings.topic_labeled, _labeled(index, at, 2, "canary", correct=True), at + 0.5)
            index += 1
    send(settings.topic_labeled, _labeled(index, t0 - 30, 1, "champion", correct=False), t0 - 29)  # another run's
    decisions = [
        ("trigger", "retrain_triggered", t0 + 20, 1, {"reason_code": "schedule"}),  # before the onset
        ("trigger", "retrain_declined", t0 + 45, 1, {"reason_code": None}),
        ("trigger", "retrain_triggered", t0 + 50, 1, {"reason_code": "concept_drift"}),
        ("retrain", "registered", t0 + 58, 2, {}),
        ("retrain", "challenger_set", t0 + 59, 2, {}),
        ("promotion", "trial_started", t0 + 60, 2, {}),
        ("promotion", "promoted", t0 + 70, 2, {}),
        ("promotion", "rolled_back", t0 + 90, 3, {}),
    ]
    for actor, action, at, version, details in decisions:
        send(settings.topic_audit, _audit(actor, action, at, version, **details), at)
    send(settings.topic_audit, b"not json", t0 + 55)
    send(settings.topic_audit, _audit("promotion", "promoted", t0 + 150, 9), t0 + 150)  # after the run
    for second in range(0, 100, 10):
        detections = [{"version": 1, "at_event": 500}] if second == 50 else []
        send(settings.topic_drift, _drift_report(t0 + second, 0.1 if second < 40 else 0.3, detections), t0 + second)
    assert producer.flush(15) == 0

    png = tmp_path / "out" / "timeline.png"
    facts = write_timeline(
        kafka_bootstrap, settings, since, until, onset, png, title="test run", drifted_share_threshold=0.15, window=200
    )

    assert facts["onset"] == iso_time(onset)
    assert facts["detection"] == iso_time(t0 + 50) and facts["detection_reason"] == "concept_drift"
    assert (facts["challenger"], facts["challenger_version"]) == (iso_time(t0 + 59), 2)
    assert (facts["promotion"], facts["promoted_version"], facts["promoted_by"]) == (iso_time(t0 + 70), 2, "promotion")
    assert facts["new_champion_serving"] == iso_time(t0 + 70)
    assert [r["version"] for r in facts["rollbacks"]] == [3]
    assert facts["drift_first_scored"] is None  # without is_drifted, nothing tells drifted events apart
    assert facts["seconds_from_onset"] == {
        "drift_first_scored": None,
        "detection": 10.0,
        "challenger": 19.0,
        "promotion": 30.0,
        "new_champion_serving": 30.0,
    }
    # before: the last 200 champion outcomes before the onset; after the drift: v1 from the onset to the
    # promotion; after the promotion: v2 as champion, until the end of the run
    assert facts["outcomes"] == {"before_drift": 200, "after_drift": 300, "after_promotion": 300, "all": 1000 + 50}
    assert facts["accuracy_before_drift"] == 0.95
    assert facts["accuracy_after_drift"] == 0.75
    assert facts["accuracy_after_promotion"] == 0.9

    # A pipeline lagging behind its input: the drifted events (told by id) were scored from 45 s on only.
    late = {f"e-{index}" for index in range(450, 2000)}
    lagging = timeline_facts(
        read_run(kafka_bootstrap, settings, since, until, is_drifted=late.__contains__), onset, window=200
    )
    assert lagging["drift_first_scored"] == iso_time(t0 + 45) and lagging["onset"] == iso_time(onset)
    assert lagging["seconds_from_onset"]["drift_first_scored"] == 5.0
    assert lagging["outcomes"]["after_drift"] == 250  # v1's drifted events, 45 s to the promotion
    # the last 200 old events: 150 before the onset (7 errors, one in 20) and 50 after it (13 errors, one in 4)
    assert lagging["accuracy_before_drift"] == 0.9

    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and facts["png"] == str(png)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1100, 650)
    red, green, blue = np.moveaxis(image.imread(png)[..., :3], -1, 0)
    # The promotion marker (the only green in the chart) runs through both panels.
    greenish = (green - red > 0.25) & (green - blue > 0.25)
    assert greenish.sum(axis=0).max() > 400


def test_rolling_accuracy_is_the_mean_of_the_last_window_outcomes():
    correct = np.random.default_rng(1).random(57) < 0.7
    got = rolling_accuracy(correct, 10)
    expected = [correct[max(0, i - 9) : i + 1].mean() for i in range(len(correct))]
    assert got == pytest.approx(expected)
