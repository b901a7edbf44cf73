"""The retraining's training set on a real broker and a real Feast repo: the window of the labeled log
(train_from, size, first record per event id), the point-in-time join from Feast's offline store (parity
with the scored rows, fallbacks, compaction) and the dataset fingerprint."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from driftloop import kafka
from driftloop.features.feast.offline import OfflineHistory
from driftloop.features.feast.repo import apply as feast_apply
from driftloop.features.feast.writer import FeastWriter
from driftloop.retrain.training_set import NotEnoughData, build_training_set, fingerprint, read_window
from driftloop.spec import load_spec
from driftloop.streams.worker.validation import Event
from tests.support.training import (
    feast_row,
    labeled_record,
    publish,
    scored_stream,
    training_settings,
    write_feast,
    write_spec,
)


@pytest.fixture
def pipeline(tmp_path, kafka_bootstrap, unique):
    spec_path = write_spec(tmp_path / "spec.yaml", f"ts_{unique}", window_events=400, min_rows=100)
    settings = training_settings(tmp_path, kafka_bootstrap, unique, spec_path)
    spec = load_spec(settings.spec)
    feast_apply(settings, spec)
    kafka.ensure_topics(kafka_bootstrap, [settings.topic_labeled], settings.partitions)
    writer = FeastWriter(settings, spec)
    yield settings, spec, writer
    writer.close()


def test_training_set_is_the_window_with_feast_features_equal_to_the_scored_rows(pipeline, kafka_bootstrap):
    settings, spec, writer = pipeline
    stream = scored_stream(spec, 900, seed=11)
    # Two events of one entity in the same millisecond: Feast answers such a pair with one vector.
    twin_event, twin_row, _ = stream[850]
    twin = Event(
        f"{twin_event.event_id}-twin", twin_event.entity, twin_event.event_time, twin_event.values, (), (), b""
    )
    twin_row_b = {**twin_row, "amount": twin_row["amount"] + 1.0}
    stream.insert(851, (twin, twin_row_b, 1))
    # An entity Feast never got a row for (its rows were lost, say): dask must not choke on it.
    ghost_event, ghost_row, _ = stream[870]
    ghost = Event("ghost-1", "u-ghost", ghost_event.event_time, ghost_event.values, (), (), b"")
    stream.insert(871, (ghost, ghost_row, 0))
    tampered = stream[880][0].event_id  # its Feast row differs from what was scored

    feast_rows = [
        feast_row(spec, e, {**r, "amount": r["amount"] * 2} if e.event_id == tampered else r)
        for e, r, _ in stream
        if e.entity != "u-ghost"
    ]
    write_feast(writer, feast_rows, batch=60)  # 15 files: several, as the live writer leaves them
    records = [(e.entity, labeled_record(spec, e, r, label, latency_ms=3.5, shadow=None)) for e, r, label in stream]
    # at-least-once: the first record of an event id counts; a repeat (even a different one) does not
    repeats = [(e.entity, labeled_record(spec, e, {**r, "amount": -1.0}, 1 - label)) for e, r, label in stream[700:720]]
    # repeats of events older than the window (their first records were pushed out of it): they stay out
    late_repeats = [(e.entity, labeled_record(spec, e, r, label)) for e, r, label in stream[455:465]]
    publish(kafka_bootstrap, settings.topic_labeled, records[:760] + repeats + records[760:] + late_repeats)

    train_from = stream[450][0].event_time
    window = read_window(kafka_bootstrap, settings.topic_labeled, spec, train_from, group="test-reader")
    history = OfflineHistory(settings, spec)
    data = build_training_set(history, window, spec, train_from)

    eligible = sorted((e.event_time, e.event_id) for e, _, _ in stream if e.event_time >= train_from)
    assert window.read == len(stream) + len(repeats) + len(late_repeats)
    # The window does not remember event ids it no longer holds: a late repeat read after its first record
    # left the window counts as eligible, not as a duplicate (which depends on the partitions' read order).
    assert len(repeats) <= window.duplicates <= len(repeats) + len(late_repeats)
    assert window.eligible + window.duplicates == len(eligible) + len(repeats) + len(late_repeats)
    assert window.before_train_from == len(stream) - len(eligible)
    assert data.event_ids == [event_id for _, event_id in eligible[-400:]]  # newest 400, oldest first
    assert data.event_times == sorted(data.event_times)
    scored = {e.event_id: (r, label) for e, r, label in stream}
    expected_rows = [scored[i][0] for i in data.event_ids]
    assert data.labels == [scored[i][1] for i in data.event_ids]
    # Parity: Feast's point-in-time vectors are exactly (values and types) the rows that were scored,
    # except the tampered one, which Feast supplies (it is the source) and which is counted.
    tampered_at = data.event_ids.index(tampered)
    assert data.rows[tampered_at]["amount"] == expected_rows[tampered_at]["amount"] * 2
    assert data.feast_mismatches == 1
    for got, want in zip(
        data.rows[:tampered_at] + data.rows[tampered_at + 1 :],
        expected_rows[:tampered_at] + expected_rows[tampered_at + 1 :],
    ):
        assert got == want
        assert [type(v) for v in got.values()] == [type(v) for v in want.values()]
    # the twins and the ghost keep their labeled features; everything else came from Feast
    assert data.from_labeled == 3 and data.from_feast == 397
    assert data.rows[data.event_ids.index(twin.event_id)] == twin_row_b
    assert data.fingerprint == fingerprint(data.event_ids, data.labels, data.rows, spec.model_inputs)

    # Retrieval compacted the offline files into one, row for row.
    files = sorted(history.directory.glob("*.parquet"))
    assert len(files) == 1 and pq.read_table(files[0]).num_rows == len(feast_rows)
    assert build_training_set(history, window, spec, train_from).rows == data.rows


def test_the_fingerprint_changes_with_any_label_or_value(pipeline):
    _, spec, _ = pipeline
    stream = scored_stream(spec, 50, seed=5)
    ids, labels, rows = [e.event_id for e, _, _ in stream], [label for _, _, label in stream], [r for _, r, _ in stream]
    base = fingerprint(ids, labels, rows, spec.model_inputs)
    assert base == fingerprint(list(ids), list(labels), [dict(r) for r in rows], spec.model_inputs)
    flipped = labels[:10] + [1 - labels[10]] + labels[11:]
    assert fingerprint(ids, flipped, rows, spec.model_inputs) != base
    nudged = rows[:3] + [{**rows[3], "amount": rows[3]["amount"] + 0.01}] + rows[4:]
    assert fingerprint(ids, labels, nudged, spec.model_inputs) != base
    assert fingerprint(ids[::-1], labels[::-1], rows[::-1], spec.model_inputs) != base


def test_too_few_rows_since_train_from_is_reported_not_trained(pipeline, kafka_bootstrap):
    settings, spec, writer = pipeline
    stream = scored_stream(spec, 300, seed=3)
    write_feast(writer, [feast_row(spec, e, r) for e, r, _ in stream], batch=300)
    publish(
        kafka_bootstrap,
        settings.topic_labeled,
        [(e.entity, labeled_record(spec, e, r, label)) for e, r, label in stream],
    )
    train_from = stream[250][0].event_time  # 50 rows since, 100 needed
    window = read_window(kafka_bootstrap, settings.topic_labeled, spec, train_from, group="test-reader")
    with pytest.raises(NotEnoughData, match=r"^50 labelled rows since .*, 100 needed$") as raised:
        build_training_set(OfflineHistory(settings, spec), window, spec, train_from)
    assert (raised.value.found, raised.value.needed) == (50, 100)
