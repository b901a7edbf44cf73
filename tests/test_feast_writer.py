"""FeastWriter: the online store serves exactly the scored vectors, the offline history joins point-in-time,
and the background writer drains, pushes back and surfaces failures."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from driftloop import settings as settings_module
from driftloop.errors import DriftloopError
from driftloop.features.feast_repo import apply, feature_view_name, offline_dir
from driftloop.features.feast_writer import FeastWriteError, FeastWriter, arrow_schema
from driftloop.settings import DEMO_SPEC
from driftloop.spec import parse_spec

NOW = time.time()


def _spec(unique: str):
    """The demo spec under its own name (its own Feast project), with optional float, category and bool fields."""
    document = yaml.safe_load(DEMO_SPEC.read_text())
    document["name"] = f"fw_{unique}"
    for name in ("amount", "merchant_category", "card_present"):
        document["events"]["fields"][name]["required"] = False
    return parse_spec(document)


def _settings(tmp_path: Path, **env):
    return settings_module.load(environ={"DRIFTLOOP_DATA_DIR": str(tmp_path / "data"),
                                         "DRIFTLOOP_FEAST_REPO": str(tmp_path / "repo"), **env})


def _row(spec, user: str, event_time: float, seed: float, **fields) -> dict:
    """A row as the scorer makes it; feature values that a float32 or a decimal round trip would change."""
    row = {spec.events.entity: user, "event_timestamp": event_time}
    row.update({f.name: seed + i / 3 for i, f in enumerate(spec.features)})
    row.update(amount=seed * 0.1 + 0.2, merchant_category="travel", country="NL", channel="web",
               card_present=True, account_age_days=2**40 + 1)
    row.update(fields)
    return row


def _inputs(spec, row: dict) -> dict:
    return {name: row[name] for name in spec.model_inputs}


def _assert_served(writer: FeastWriter, spec, expected: dict[str, dict | None]) -> None:
    served = dict(zip(expected, writer.online_vectors(list(expected))))
    for user, row in expected.items():
        want = None if row is None else _inputs(spec, row)
        assert served[user] == want, user
        if want is not None:  # equal is not enough: 1 == 1.0 == True
            assert [type(v) for v in served[user].values()] == [type(v) for v in want.values()], user


def test_a_repo_that_was_never_applied_is_one_clear_error(tmp_path, unique):
    with pytest.raises(DriftloopError, match=r"feature view 'fw_\w+_features' is not registered .*driftloop up"):
        FeastWriter(_settings(tmp_path), _spec(unique))


@pytest.fixture
def sqlite_repo(tmp_path, unique):
    """An applied repo on SQLite: (settings, spec, the FeatureStore apply returned, a FeastWriter)."""
    settings, spec = _settings(tmp_path), _spec(unique)
    store = apply(settings, spec)
    writer = FeastWriter(settings, spec)
    yield settings, spec, store, writer
    writer.close()


def test_online_store_serves_exactly_the_written_vectors(sqlite_repo):
    _, spec, _, writer = sqlite_repo
    first = [_row(spec, "u-1", NOW - 60, 1.0), _row(spec, "u-2", NOW - 60, 2.0),
             _row(spec, "u-3", NOW - 50, 3.0, amount=None, merchant_category=None, card_present=None,
                  account_age_days=None)]
    second = [_row(spec, "u-1", NOW - 10, 4.0, card_present=False, merchant_category="__unseen__"),
              _row(spec, "u-2", NOW - 10, 5.0), _row(spec, "u-2", NOW - 10, 6.0, account_age_days=0)]
    writer.write(first)
    writer.write(second)
    # u-1 and u-2: the latest write wins, across batches and within one (same event time included).
    _assert_served(writer, spec, {"u-1": second[0], "u-2": second[2], "u-3": first[2], "u-unknown": None})


def test_history_joins_point_in_time_across_batches(sqlite_repo):
    settings, spec, store, writer = sqlite_repo
    early = [_row(spec, "u-1", NOW - 600, 1.0, account_age_days=None), _row(spec, "u-2", NOW - 600, 2.0)]
    late = [_row(spec, "u-1", NOW - 60, 3.0, card_present=None)]
    writer.write(early)
    writer.write(late)

    files = sorted(offline_dir(settings, spec).glob("*.parquet"))
    assert len(files) == 2 and all(pq.read_schema(f).remove_metadata() == arrow_schema(spec) for f in files)
    asked = [("u-1", NOW - 900), ("u-1", NOW - 300), ("u-1", NOW), ("u-2", NOW)]
    entity_df = pd.DataFrame({"user_id": [u for u, _ in asked], "question": range(len(asked)),
                              "event_timestamp": pd.to_datetime([round(t) for _, t in asked], unit="s", utc=True)})
    view = store.get_feature_view(feature_view_name(spec))
    history = store.get_historical_features(
        entity_df=entity_df, features=[f"{view.name}:{name}" for name in spec.model_inputs]).to_df()
    history = history.sort_values("question")
    answers = [{name: None if pd.isna(value) else value for name, value in answer.items()}
               for answer in history[list(spec.model_inputs)].to_dict("records")]

    # Asked before anything was written: Feast's file offline store leaves the question out (it never
    # answers with a later vector). Between the writes: the earlier vector; after them: the latest.
    assert list(history["question"]) == [1, 2, 3]
    assert answers == [_inputs(spec, early[0]), _inputs(spec, late[0]), _inputs(spec, early[1])]


def test_background_writer_drains_on_flush_and_reports_each_write(sqlite_repo):
    settings, spec, _, _ = sqlite_repo
    writes: list[tuple[int, float]] = []
    writer = FeastWriter(settings, spec, max_pending_batches=3, on_write=lambda rows, s: writes.append((rows, s)))
    batches = [[_row(spec, f"u-{b}-{i}", NOW - 30 + b, b + i / 100) for i in range(40)] for b in range(10)]
    for batch in batches:
        writer.submit(batch)
    writer.flush(timeout=60)
    assert sum(rows for rows, _ in writes) == 400 and all(seconds > 0 for _, seconds in writes)
    written = pq.read_table(offline_dir(settings, spec)).num_rows
    assert written == 400
    last = batches[-1]
    _assert_served(writer, spec, {row["user_id"]: row for row in last})
    writer.close()


def test_submit_blocks_only_when_the_writer_is_max_pending_batches_behind(sqlite_repo):
    settings, spec, _, _ = sqlite_repo
    release = threading.Event()
    writer = FeastWriter(settings, spec, max_pending_batches=2, on_write=lambda rows, s: release.wait(30))
    rows = [_row(spec, "u-1", NOW, 1.0)]
    writer.submit(rows)  # taken by the writer thread, which then stalls in on_write
    writer.submit(rows)  # two batches unwritten: the limit
    third = threading.Thread(target=writer.submit, args=(rows,))
    third.start()
    third.join(0.5)
    assert third.is_alive()  # held back while the writer is behind
    release.set()
    third.join(10)
    assert not third.is_alive()
    writer.flush(timeout=30)
    writer.close()


@pytest.mark.parametrize("breakage", ["mistyped value", "store directory removed"])
def test_a_failed_write_is_raised_by_flush_and_fails_every_later_call(sqlite_repo, breakage):
    settings, spec, _, writer = sqlite_repo
    good = [_row(spec, "u-1", NOW, 1.0)]
    writer.submit(good)
    writer.flush(timeout=30)
    if breakage == "mistyped value":
        bad = [_row(spec, "u-2", NOW, 2.0, account_age_days=3.5)]
        expected = "'account_age_days' must be int64"
    else:
        shutil.rmtree(offline_dir(settings, spec))
        bad, expected = good, "FileNotFoundError"
    writer.submit(bad)
    with pytest.raises(FeastWriteError, match=expected):
        writer.flush(timeout=30)
    with pytest.raises(FeastWriteError, match=expected):
        writer.submit(good)  # rows were lost: nothing may be acknowledged past them
    with pytest.raises(FeastWriteError, match=expected):
        writer.flush(timeout=30)
    assert writer.online_vector("u-2") is None


def test_redis_online_store_serves_exactly_the_written_vectors(tmp_path, unique, redis_url):
    settings = _settings(tmp_path, DRIFTLOOP_ONLINE_STORE="redis", DRIFTLOOP_REDIS_URL=redis_url)
    spec = _spec(unique)  # its own Feast project: its own Redis keys, deleted by teardown
    store = apply(settings, spec)
    writer = FeastWriter(settings, spec)
    try:
        first = [_row(spec, "u-1", NOW - 60, 1.0), _row(spec, "u-2", NOW - 60, 2.0, amount=None, account_age_days=None)]
        second = [_row(spec, "u-1", NOW - 60, 3.0, card_present=False)]  # same event time: still the latest write
        writer.submit(first)
        writer.submit(second)
        writer.flush(timeout=30)
        _assert_served(writer, spec, {"u-1": second[0], "u-2": first[1], "u-unknown": None})
    finally:
        writer.close()
        store.teardown()
