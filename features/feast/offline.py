"""Point-in-time feature vectors from the feature view's offline store, for training sets.

`OfflineHistory.features(keys)` answers, for each (entity, event time), the vector the feature view held
then: the entity's latest row at or before that time and within the view's TTL, which is what Feast's
`get_historical_features` answers (tests/integration/test_feast_offline.py compares the two), in memory bounded by
the keys asked, not by the data stored:

- **Not Feast's join.** Feast 0.67's file offline store (dask) first merges the asked rows with every
  stored row of their entity and only then filters by time: a cross join per entity. With one entity
  (an elec2 replay) 20,000 asked rows and 33,508 stored rows make 670 million joined rows; the retrain
  worker was killed at 20.8 GB.
- **Here** the store is scanned with pyarrow: only the entity, timestamp and input columns, only rows of
  the asked entities between the earliest asked time minus the TTL and the latest asked time (row-group
  statistics skip the rest), one record batch at a time. Each batch is joined to the keys with pandas
  `merge_asof` (by entity, backward, tolerance = the TTL) and each key keeps its latest answer over the
  batches. Memory: the keys, their answers and one batch.
- **Equal timestamps.** Of stored rows with the same entity and time, the one written last answers (as
  in the online store, where the last write wins); Feast leaves that order unspecified.

The writer appends one parquet file per batch (about one a second), and thousands of small files cost
more to open than to read, so `features` first compacts them into one: streamed, a row group at a time,
written as `.tmp` and renamed, then the merged files are removed. The merged file takes the name prefix
(write time) of the newest file it holds, so name order stays write order. A lock file in the directory
keeps a compaction from deleting files under a concurrent read of another retrain worker on this host;
the writer only ever adds new files, so it needs no lock.

A key with no stored row at or before its time within the TTL is answered None.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftloop.errors import DriftloopError
from driftloop.features.feast.repo import TIMESTAMP_COLUMN, feature_view_name, offline_dir, repo_config
from driftloop.settings import Settings
from driftloop.spec import PipelineSpec

_LOG = logging.getLogger("driftloop.features.feast.offline")
LOCK_FILE = ".retrain.lock"  # not *.parquet: Feast's reader skips it
BATCH_ROWS = 65_536  # rows per record batch read, and per row group of a compacted file
_COMPACTED = "-compacted-"


@dataclass(frozen=True)
class Compaction:
    files: int  # files merged (0: there was at most one)
    rows: int
    seconds: float


class OfflineHistory:
    """The feature view's offline store; the view (and its TTL) is read once from the Feast registry."""

    def __init__(self, settings: Settings, spec: PipelineSpec):
        from feast import FeatureStore, RepoConfig
        from feast.errors import FeatureViewNotFoundException

        # Configured from the settings, as the writer is, not from whatever feature_store.yaml is on disk.
        config = RepoConfig(**repo_config(settings, spec))
        config.repo_path = settings.feast_repo.resolve()
        store = FeatureStore(repo_path=str(config.repo_path), config=config)
        try:
            view = store.get_feature_view(feature_view_name(spec))
        except (FeatureViewNotFoundException, FileNotFoundError):  # no such view, or no registry at all
            raise DriftloopError(
                f"the Feast feature view {feature_view_name(spec)!r} is not registered in "
                f"{config.registry.path}: `driftloop up` applies it"
            ) from None
        # Feast reads a TTL of 0 (or none) as "no limit"
        self._ttl_us = round(view.ttl.total_seconds() * 1_000_000) if view.ttl else None
        self._inputs = list(spec.model_inputs)
        self._entity = spec.events.entity
        self.directory = offline_dir(settings, spec)

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("*.parquet"))  # not *.tmp: files still being written

    def compact(self) -> Compaction:
        """Merge every offline file into one, a row group at a time; rows are kept exactly and in order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        started = time.perf_counter()
        with self._locked(exclusive=True):
            for leftover in self.directory.glob(f"*{_COMPACTED}*.tmp"):  # a compaction that was killed
                leftover.unlink(missing_ok=True)
            files = self._files()
            if len(files) <= 1:
                return Compaction(0, 0, time.perf_counter() - started)
            schema = pq.read_schema(files[0])
            name = f"{files[-1].name.split('-', 1)[0]}{_COMPACTED}{uuid.uuid4().hex[:8]}.parquet"
            partial = self.directory / (name + ".tmp")
            rows = 0
            with pq.ParquetWriter(partial, schema) as writer:
                pending: list[pa.RecordBatch] = []
                for batch in _batches(files, schema):
                    pending.append(batch)
                    if sum(b.num_rows for b in pending) >= BATCH_ROWS:
                        rows += _write_row_group(writer, pending, schema)
                        pending = []
                rows += _write_row_group(writer, pending, schema)
            os.replace(partial, self.directory / name)
            for path in files:
                path.unlink(missing_ok=True)
        result = Compaction(len(files), rows, time.perf_counter() - started)
        _LOG.info(
            "compacted %d offline files (%d rows) into %s in %.1fs", result.files, result.rows, name, result.seconds
        )
        return result

    def features(self, keys: Sequence[tuple[Any, int]]) -> list[dict[str, Any] | None]:
        """The stored vector (model inputs, typed as the scorer's rows) for each (entity, epoch microseconds)."""
        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import pyarrow.dataset as ds

        self.compact()
        distinct = list(dict.fromkeys(keys))
        if not distinct:
            return []
        asked = pd.DataFrame(
            {
                "entity": [entity for entity, _ in distinct],
                "at": [us for _, us in distinct],
                "key": np.arange(len(distinct)),
            }
        ).sort_values("at", kind="stable")
        best_at = np.full(len(distinct), np.iinfo(np.int64).min)
        answers: list[dict[str, Any] | None] = [None] * len(distinct)
        moment = pa.timestamp("us", tz="UTC")
        wanted = ds.field(self._entity).isin(sorted(set(asked["entity"]))) & (
            ds.field(TIMESTAMP_COLUMN) <= pa.scalar(int(asked["at"].iloc[-1]), moment)
        )
        if self._ttl_us is not None:
            earliest = int(asked["at"].iloc[0]) - self._ttl_us
            wanted &= ds.field(TIMESTAMP_COLUMN) >= pa.scalar(earliest, moment)
        with self._locked(exclusive=False):
            files = self._files()
            if not files:
                return [None] * len(keys)
            # one thread: batches come in file order, then row order, so the last written row wins a tie
            scan = ds.dataset(files, format="parquet").to_batches(
                columns=[self._entity, TIMESTAMP_COLUMN, *self._inputs],
                filter=wanted,
                batch_size=BATCH_ROWS,
                use_threads=False,
            )
            for batch in scan:
                if batch.num_rows == 0:
                    continue
                stored_at = batch.column(TIMESTAMP_COLUMN).cast(moment).cast(pa.int64()).to_numpy()
                stored = pd.DataFrame(
                    {
                        "entity": batch.column(self._entity).to_pandas(),
                        "at": stored_at,
                        "row": np.arange(batch.num_rows),
                    }
                )
                matched = pd.merge_asof(
                    asked,
                    stored.sort_values("at", kind="stable"),
                    on="at",
                    by="entity",
                    direction="backward",
                    tolerance=self._ttl_us,
                )
                found = matched[matched["row"].notna()]
                key, row = found["key"].to_numpy(), found["row"].to_numpy(dtype=np.int64)
                newer = stored_at[row] >= best_at[key]  # a later batch was written later: it wins a tie
                key, row = key[newer], row[newer]
                best_at[key] = stored_at[row]
                rows = batch.select(self._inputs).take(row).to_pylist()
                for index, row in zip(key.tolist(), rows):
                    answers[index] = {name: _missing_as_none(value) for name, value in row.items()}
        by_key = dict(zip(distinct, answers))
        return [by_key[key] for key in keys]


def _batches(files: Sequence[Path], schema: Any) -> Iterator[Any]:
    """Every record batch of the files, in order; DriftloopError for a file of another schema."""
    import pyarrow.parquet as pq

    for path in files:
        handle = pq.ParquetFile(path)
        if not handle.schema_arrow.equals(schema, check_metadata=False):
            raise DriftloopError(
                f"offline file {path} has another schema than {files[0].name}: {handle.schema_arrow} vs {schema}"
            )
        yield from handle.iter_batches(batch_size=BATCH_ROWS)


def _write_row_group(writer: Any, batches: list[Any], schema: Any) -> int:
    import pyarrow as pa

    if not batches:
        return 0
    table = pa.Table.from_batches(batches, schema=schema)
    writer.write_table(table, row_group_size=table.num_rows)
    return table.num_rows


def _missing_as_none(value: Any) -> Any:
    """Feast reads a stored NaN as missing (pandas' NA), and the scorer's rows hold None for missing."""
    return None if isinstance(value, float) and math.isnan(value) else value
