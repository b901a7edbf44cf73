"""Feast's SQLite online store with batched writes: the plug-in point Feast offers for a faster store.

`feature_store.yaml` names it as the online store's type (features/feast/repo.py writes it):

    online_store:
      type: driftloop.features.feast.online_store.BatchedSqliteOnlineStore
      path: /abs/path/online.db

It is Feast's `SqliteOnlineStore` in every respect (tables, keys, serialisation, reads, `feast apply`)
except `online_write_batch`, which runs Feast's own upsert statement once per batch with `executemany`
instead of once per value with `execute`: that per-value call was most of the store's cost, and the
worker writes every scored entity's vector once a second. A configuration the batched statement does not
reproduce (an OpenAI-compatible `value_num` column, vector columns) goes through Feast's own write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig, _quote_id, _table_id
from feast.utils import to_naive_utc

TYPE = "driftloop.features.feast.online_store.BatchedSqliteOnlineStore"
_COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")


class BatchedSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast finds a custom store's config as `<store class>Config` in the store's module."""

    type: Literal["driftloop.features.feast.online_store.BatchedSqliteOnlineStore"] = TYPE  # type: ignore[assignment]


class BatchedSqliteOnlineStore(SqliteOnlineStore):
    def online_write_batch(
        self,
        config: Any,
        table: Any,
        data: Sequence[tuple[Any, dict[str, Any], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if config.online_store.enable_openai_compatible_store or config.online_store.vector_enabled:
            super().online_write_batch(config, table, list(data), progress)
            return
        name = _table_id(config.project, table, config.registry.enable_online_feature_view_versioning)
        upsert = (
            f"INSERT INTO {_quote_id(name)} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
            f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            f"{', '.join(f'{column} = excluded.{column}' for column in _COLUMNS[2:])};"
        )
        version = config.entity_key_serialization_version
        rows = []
        for entity_key, values, event_time, created_time in data:
            key = serialize_entity_key(entity_key, entity_key_serialization_version=version)
            event_ts = to_naive_utc(event_time)
            created_ts = None if created_time is None else to_naive_utc(created_time)
            for feature, value in values.items():
                rows.append(
                    (
                        key,
                        feature,
                        value.SerializeToString(),
                        extract_text_and_num(value, False)[0],
                        event_ts,
                        created_ts,
                    )
                )
        connection = self._get_conn(config)
        with connection:
            connection.executemany(upsert, rows)
        if progress is not None:
            progress(len(data))
