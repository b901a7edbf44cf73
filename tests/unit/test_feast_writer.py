"""FeastWriter: the online store serves exactly the scored vectors, the offline history joins point-in-time,
and the background writer drains, pushes back and surfaces failures."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from driftloop import settings as settings_module
from driftloop.errors import DriftloopError
from driftloop.features.feast.arrow_rows import arrow_schema, rows_to_table
from driftloop.features.feast.repo import apply, feature_view_name, offline_dir, repo_config
from driftloop.features.feast.writer import FeastWriteError, FeastWriter, _OnlineRecords
from driftloop.settings import DEMO_SPEC
from driftloop.spec import parse_spec

NOW = time.time()


def _spec(unique: str, entity_type: str = "string"):
    """The demo spec under its own name (its own Feast project), with optional float, category and bool fields."""
    document = yaml.safe_load(DEMO_SPEC.read_text())
    document["name"] = f"fw_{unique}"
    for name in ("amount", "merchant_category", "card_present"):
        document["events"]["fields"][name]["required"] = False
    document["events"]["fields"][document["events"]["entity"]]["type"] = entity_type
    return parse_spec(document)


def _settings(tmp_path: Path, **env):
    return settings_module.load(
        environ={"DRIFTLOOP_DATA_DIR": str(tmp_path / "data"), "DRIFTLOOP_FEAST_REPO": str(tmp_path / "repo"), **env}
    )


def _row(spec, user: str, event_time: float, seed: float, **fields) -> dict:
    """A row as the scorer makes it; feature values that a float32 or a decimal round trip would change."""
    row = {spec.events.entity: user, "event_timestamp": event_time}
    row.update({f.name: seed + i / 3 for i, f in enumerate(spec.features)})
    row.update(
        amount=seed * 0.1 + 0.2,
        merchant_category="travel",
        country="NL",
        channel="web",
        card_present=True,
        account_age_days=2**40 + 1,
    )
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
    first = [
        _row(spec, "u-1", NOW - 60, 1.0),
        _row(spec, "u-2", NOW - 60, 2.0),
        _row(spec, "u-3", NOW - 50, 3.0, amount=None, merchant_category=None, card_present=None, account_age_days=None),
    ]
    second = [
        _row(spec, "u-1", NOW - 10, 4.0, card_present=False, merchant_category="__unseen__"),
        _row(spec, "u-2", NOW - 10, 5.0),
        _row(spec, "u-2", NOW - 10, 6.0, account_age_days=0),
    ]
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
    entity_df = pd.DataFrame(
        {
            "user_id": [u for u, _ in asked],
            "question": range(len(asked)),
            "event_timestamp": pd.to_datetime([round(t) for _, t in asked], unit="s", utc=True),
        }
    )
    view = store.get_feature_view(feature_view_name(spec))
    history = store.get_historical_features(
        entity_df=entity_df, features=[f"{view.name}:{name}" for name in spec.model_inputs]
    ).to_df()
    history = history.sort_values("question")
    answers = [
        {name: None if pd.isna(value) else value for name, value in answer.items()}
        for answer in history[list(spec.model_inputs)].to_dict("records")
    ]

    # Asked before anything was written: Feast's file offline store leaves the question out (it never
    # answers with a later vector). Between the writes: the earlier vector; after them: the latest.
    assert list(history["question"]) == [1, 2, 3]
    assert answers == [_inputs(spec, early[0]), _inputs(spec, late[0]), _inputs(spec, early[1])]


def test_background_writer_drains_on_flush_and_reports_each_write(sqlite_repo):
    settings, spec, _, _ = sqlite_repo
    writes: list[tuple[int, float]] = []
    writer = FeastWriter(settings, spec, max_pending_rows=100, on_write=lambda rows, s: writes.append((rows, s)))
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


def test_submit_blocks_only_when_the_writer_is_max_pending_rows_behind(sqlite_repo):
    settings, spec, _, _ = sqlite_repo
    release = threading.Event()
    writer = FeastWriter(settings, spec, max_pending_rows=2, on_write=lambda rows, s: release.wait(30))
    rows = [_row(spec, "u-1", NOW, 1.0)]
    writer.submit(rows)  # taken by the writer thread, which then stalls in on_write
    writer.submit(rows)  # two rows unwritten: the limit
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


# -- the online write is Feast's own, value for value -------------------------------------------------


def _parity_batches(spec, entity) -> list[list[dict]]:
    """Batches covering every kind of value: missing values in each column type, a float NaN, an int in a
    float column, an empty and an unseen category, an entity twice in a batch, an entity overwritten by a
    later batch, a row whose inputs are all missing, and a batch whose inputs are all missing."""
    nothing = {name: None for name in spec.model_inputs}
    return [
        [
            _row(spec, entity(1), NOW - 90, 1.0),
            _row(spec, entity(2), NOW - 90, 2.0, account_age_days=7),
            _row(
                spec,
                entity(3),
                NOW - 80.123456,
                3.0,
                amount=None,
                merchant_category=None,
                card_present=None,
                account_age_days=None,
            ),
            _row(
                spec,
                entity(4),
                NOW - 80,
                4.0,
                amount=float("nan"),
                merchant_category="__unseen__",
                card_present=False,
                account_age_days=0,
            ),
            _row(spec, entity(5), NOW - 70, 5.0, amount=12, merchant_category="", country="other"),
        ],
        [
            _row(spec, entity(1), NOW - 30, 6.0, card_present=False, channel="app"),
            _row(spec, entity(2), NOW - 30, 7.0, account_age_days=2**40 + 1),
            _row(spec, entity(2), NOW - 30, 8.0, account_age_days=None, merchant_category="__unseen__"),
            _row(spec, entity(6), NOW - 20, 9.0, **nothing),
        ],
        [_row(spec, entity(1), NOW - 10, 0.0, **nothing), _row(spec, entity(7), NOW - 10, 0.0, **nothing)],
    ]


def _served(store, spec, entity_ids) -> list:
    """Everything get_online_features answers per input: values, statuses, event times."""
    response = store.get_online_features(
        features=[f"{feature_view_name(spec)}:{name}" for name in spec.model_inputs],
        entity_rows=[{spec.events.entity: e} for e in entity_ids],
    )
    names = list(response.proto.metadata.feature_names.val)
    return [
        (names[i], list(result.values), list(result.statuses), [t.ToNanoseconds() for t in result.event_timestamps])
        for i, result in enumerate(response.proto.results)
    ]


@pytest.mark.parametrize("online_store,entity_type", [("sqlite", "string"), ("sqlite", "int"), ("redis", "string")])
def test_the_online_store_serves_what_feasts_own_write_would_have(tmp_path, unique, request, online_store, entity_type):
    """FeastWriter builds the online records itself (and on SQLite upserts them in one executemany): a second
    repo written through FeatureStore.write_to_online_store, as the writer used to, serves the same."""
    env = {}
    if online_store == "redis":
        env = {"DRIFTLOOP_ONLINE_STORE": "redis", "DRIFTLOOP_REDIS_URL": request.getfixturevalue("redis_url")}
    fast_spec, feast_spec = _spec(f"{unique}_fast", entity_type), _spec(f"{unique}_feast", entity_type)
    entity = int if entity_type == "int" else "u-{}".format
    fast_settings, feast_settings = _settings(tmp_path / "fast", **env), _settings(tmp_path / "feast", **env)
    fast_store, feast_store = apply(fast_settings, fast_spec), apply(feast_settings, feast_spec)
    fast, reference = FeastWriter(fast_settings, fast_spec), FeastWriter(feast_settings, feast_spec)
    entities = [entity(i) for i in range(1, 9)]  # 8: never written
    try:
        for batch in _parity_batches(fast_spec, entity):
            fast.write(batch)
            latest = list({row[fast_spec.events.entity]: row for row in batch}.values())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Feast warns about the all-missing batch it skips
                feast_store.write_to_online_store(
                    feature_view_name(feast_spec), rows_to_table(latest, arrow_schema(feast_spec)).to_pandas()
                )
            assert _served(fast_store, fast_spec, entities) == _served(feast_store, feast_spec, entities)
            assert fast.online_vectors(entities) == reference.online_vectors(entities)

        served = dict(zip(entities, fast.online_vectors(entities)))
        assert served[entity(1)]["channel"] == "app"  # overwritten by a later batch; the all-missing batch skipped
        assert served[entity(2)]["amount_sum_1h"] == 8.0 + 1 / 3  # the last of two rows in one batch
        assert served[entity(4)]["amount"] is None and served[entity(4)]["merchant_category"] == "__unseen__"
        assert served[entity(5)]["amount"] == 12.0 and type(served[entity(5)]["amount"]) is float
        assert served[entity(6)] == {name: None for name in fast_spec.model_inputs}
        assert served[entity(7)] is None and served[entity(8)] is None
        if online_store == "sqlite":  # the rows themselves, byte for byte
            assert _sqlite_rows(fast_settings, fast_spec) == _sqlite_rows(feast_settings, feast_spec)
    finally:
        fast.close()
        reference.close()
        fast_store.teardown()
        feast_store.teardown()


def _sqlite_rows(settings, spec) -> list[tuple]:
    with sqlite3.connect(settings.data_dir / "feast" / "online.db") as connection:
        return connection.execute(
            f'SELECT * FROM "{spec.name}_{feature_view_name(spec)}" ORDER BY entity_key, feature_name'
        ).fetchall()


def test_an_int_beyond_2_53_is_served_exactly_even_next_to_a_missing_one(sqlite_repo):
    # Feast's own write_to_online_store would round it: pandas makes an int column holding a None float64.
    _, spec, _, writer = sqlite_repo
    rows = [_row(spec, "u-1", NOW, 1.0, account_age_days=2**53 + 1), _row(spec, "u-2", NOW, 2.0, account_age_days=None)]
    writer.write(rows)
    _assert_served(writer, spec, {"u-1": rows[0], "u-2": rows[1]})


@pytest.mark.parametrize("option", [None, "enable_openai_compatible_store"])
def test_the_batched_sqlite_store_stores_what_feasts_own_sqlite_store_stores(tmp_path, unique, option):
    """Same records through Feast's SqliteOnlineStore and through ours (batched, or deferring to Feast's own
    write for a configuration it does not reproduce): the same table rows, byte for byte."""
    from feast import FeatureStore, RepoConfig

    settings, spec = _settings(tmp_path), _spec(unique)
    apply(settings, spec)
    rows = [
        _row(spec, "u-1", NOW - 60, 1.0),
        _row(spec, "u-2", NOW - 30, 2.0, amount=None, card_present=None),
        _row(spec, "u-1", NOW - 10, 3.0, merchant_category="__unseen__"),
    ]
    records = _OnlineRecords(spec).build(rows)
    stored = {}
    for store_type in ("sqlite", None):  # None: what driftloop configures
        config = repo_config(settings, spec)
        config["online_store"]["path"] = str(tmp_path / f"{store_type}.db")
        if store_type:
            config["online_store"]["type"] = store_type
        if option:
            config["online_store"][option] = True
        store = FeatureStore(repo_path=str(settings.feast_repo.resolve()), config=RepoConfig(**config))
        view = store.get_feature_view(feature_view_name(spec))
        store.provider.update_infra(
            project=spec.name,
            tables_to_delete=[],
            tables_to_keep=[view],
            entities_to_delete=[],
            entities_to_keep=[],
            partial=False,
        )
        store.provider.online_write_batch(store.config, view, records, progress=None)
        with sqlite3.connect(config["online_store"]["path"]) as connection:
            table = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()[0][0]
            stored[store_type] = connection.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2').fetchall()
    assert type(store.provider.online_store).__name__ == "BatchedSqliteOnlineStore"
    assert stored["sqlite"] and stored[None] == stored["sqlite"]


def test_background_writes_wait_out_the_interval_unless_a_flush_asks(sqlite_repo):
    settings, spec, _, _ = sqlite_repo
    writes: list[int] = []
    writer = FeastWriter(settings, spec, write_interval=30.0, on_write=lambda rows, s: writes.append(rows))
    writer.submit([_row(spec, "u-1", NOW, 1.0)])
    deadline = time.monotonic() + 10
    while not writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writes == [1]  # the first write is not held back
    writer.submit([_row(spec, "u-2", NOW, 2.0)])
    writer.submit([_row(spec, "u-3", NOW, 3.0)])
    time.sleep(0.5)
    assert writes == [1]  # the next one waits for the interval, collecting rows
    started = time.monotonic()
    writer.flush(timeout=10)  # ... unless a flush waits
    assert writes == [1, 2] and time.monotonic() - started < 5
    writer.close()
