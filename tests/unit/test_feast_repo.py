"""Feast objects derived from the spec, applied to the SQLite (default) and Redis online stores."""

from datetime import UTC, datetime

import pandas as pd
from feast.data_source import PushMode

from driftloop import settings as settings_module
from driftloop.features.feast.repo import apply, feature_view_name, offline_dir, push_source_name
from driftloop.spec import load_spec


def _settings(tmp_path, **env):
    return settings_module.load(
        environ={"DRIFTLOOP_DATA_DIR": str(tmp_path / "data"), "DRIFTLOOP_FEAST_REPO": str(tmp_path / "repo"), **env}
    )


def _roundtrip(config):
    spec = load_spec(config.spec)
    store = apply(config, spec)
    view = store.get_feature_view(feature_view_name(spec))
    assert [f.name for f in view.features] == list(spec.model_inputs)
    assert view.ttl.total_seconds() == spec.feature_ttl
    # The offline store is a directory that the writer appends parquet files to.
    assert view.batch_source.path == str(offline_dir(config, spec)) and offline_dir(config, spec).is_dir()

    row = {name: 1.5 for name in (f.name for f in spec.features)}
    row.update(
        amount=42.0,
        merchant_category="travel",
        country="NL",
        channel="web",
        card_present=False,
        account_age_days=12,
        user_id="u-feast",
        event_timestamp=datetime.now(UTC),
    )
    store.push(push_source_name(spec), pd.DataFrame([row]), to=PushMode.ONLINE)
    served = store.get_online_features(
        features=[f"{view.name}:{n}" for n in spec.model_inputs], entity_rows=[{"user_id": "u-feast"}]
    ).to_dict()
    assert served["amount"] == [42.0] and served["country"] == ["NL"] and served["txn_count_10m"] == [1.5]
    return store


def test_apply_on_sqlite_creates_the_spec_objects(tmp_path):
    config = _settings(tmp_path)
    _roundtrip(config)
    assert (config.data_dir / "feast" / "online.db").exists()
    # Feast's SQLite store with batched writes, configured as Feast configures a custom store
    assert (
        "type: driftloop.features.feast.online_store.BatchedSqliteOnlineStore"
        in (config.feast_repo / "feature_store.yaml").read_text()
    )


def test_apply_on_redis(tmp_path, redis_url):
    config = _settings(tmp_path, DRIFTLOOP_ONLINE_STORE="redis", DRIFTLOOP_REDIS_URL=redis_url)
    _roundtrip(config)
    assert "connection_string: 127.0.0.1:6379,db=0" in (config.feast_repo / "feature_store.yaml").read_text()
