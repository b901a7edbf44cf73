"""The training set's point-in-time join (features/feast/offline.py) against Feast's own
`get_historical_features` on the same offline files, and its memory on a one-entity store, where Feast's
file offline store makes a cross join per entity."""

from __future__ import annotations

import random

import pandas as pd
import pyarrow.parquet as pq

from driftloop.features.feast.offline import OfflineHistory
from driftloop.features.feast.repo import apply
from driftloop.load.benchmarks.retrain_memory import measure, prepare
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec
from tests.support.feast import DAY, START, feast_answers, feast_settings, random_row, write_files


def test_the_join_answers_what_feast_answers(tmp_path):
    spec = load_spec(DEMO_SPEC)  # a 2-day TTL; inputs of every type
    settings = feast_settings(tmp_path, DEMO_SPEC)
    apply(settings, spec)
    rng = random.Random(7)
    ttl = spec.feature_ttl
    stored: dict[str, list[float]] = {}
    rows = []
    for entity in (f"u-{n}" for n in range(6)):
        # a burst, a gap longer than the TTL, another burst: some asks fall outside the TTL
        times = sorted(
            {round(START + rng.uniform(0, 2 * DAY), 3) for _ in range(40)}
            | {round(START + rng.uniform(5 * DAY, 8 * DAY), 3) for _ in range(40)}
        )
        stored[entity] = times
        rows += [random_row(spec, rng, entity, at) for at in times]
    rng.shuffle(rows)  # files are not in event-time order
    write_files(settings, spec, rows, per_file=37)

    keys = set()
    for entity, times in stored.items():
        keys |= {(entity, round((START + rng.uniform(-DAY, 9 * DAY)) * 1e6)) for _ in range(60)}
        for at in rng.sample(times, 10):  # exactly at a row, at the TTL's edge and just past it
            us = round(at * 1e6)
            keys |= {(entity, us), (entity, us + round(ttl * 1e6)), (entity, us + round(ttl * 1e6) + 1)}
    keys = sorted(keys, key=lambda key: key[1])

    ours = OfflineHistory(settings, spec).features(keys)
    assert len(list(OfflineHistory(settings, spec).directory.glob("*.parquet"))) == 1  # compacted
    theirs = feast_answers(settings, spec, keys)
    assert ours == theirs
    answered = sum(answer is not None for answer in ours)
    assert 0.2 * len(keys) < answered < len(keys)  # both kinds of answer are exercised


def test_a_tie_is_answered_by_the_row_written_last(tmp_path):
    spec = load_spec(DEMO_SPEC)
    settings = feast_settings(tmp_path, DEMO_SPEC)
    apply(settings, spec)
    rng = random.Random(3)
    first, second = (random_row(spec, rng, "u-1", START) for _ in range(2))
    write_files(settings, spec, [first, second], per_file=1)
    (answer,) = OfflineHistory(settings, spec).features([("u-1", round(START * 1e6))])
    assert answer == {name: second[name] for name in spec.model_inputs}


def test_compaction_streams_every_row_in_write_order(tmp_path):
    spec = load_spec(DEMO_SPEC)
    settings = feast_settings(tmp_path, DEMO_SPEC)
    apply(settings, spec)
    rng = random.Random(5)
    rows = [random_row(spec, rng, f"u-{i % 7}", START + i) for i in range(1000)]
    write_files(settings, spec, rows, per_file=9)
    history = OfflineHistory(settings, spec)
    before = pq.read_table(sorted(history.directory.glob("*.parquet")))
    compaction = history.compact()
    files = sorted(history.directory.glob("*.parquet"))
    assert (compaction.files, compaction.rows, len(files)) == (112, 1000, 1)
    assert pq.read_table(files[0]).to_pandas().equals(before.to_pandas())  # NaN where NaN was
    assert history.compact().files == 0  # one file: nothing to do


def test_one_entity_store_builds_its_training_set_in_bounded_memory(tmp_path, kafka_bootstrap, unique):
    """One entity, 30,000 stored rows, a 20,000-row window: Feast's join would make 600 million rows."""
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text((DEMO_SPEC.parent / "elec2.yaml").read_text())
    spec = load_spec(spec_path)
    rng = random.Random(11)
    table = tmp_path / "table.csv"
    columns = ["period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"]
    pd.DataFrame(
        {
            **{name: [rng.random() for _ in range(30_000)] for name in columns},
            "class": [rng.randint(0, 1) for _ in range(30_000)],
        }
    ).to_csv(table, index=False)
    settings = feast_settings(
        tmp_path, spec_path, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, DRIFTLOOP_TOPIC_LABELED=f"labeled-{unique}"
    )
    written = prepare(settings, spec, table, "nsw", rows_per_file=110)
    assert written == {"table_rows": 30_000, "scored_rows": 30_000, "offline_files": 273}
    result = measure(settings, spec, limit_mb=1500)
    assert "killed_above_mb" not in result, result
    assert (result["rows"], result["from_feast"], result["feast_mismatches"]) == (20_000, 20_000, 0), result
    assert result["peak_rss_mb"] < 1000, result
