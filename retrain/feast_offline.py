"""Point-in-time feature vectors from the feature view's Feast offline store, for training sets.

`OfflineHistory.features(keys)` asks `FeatureStore.get_historical_features` for each (entity, event time)
the vector the feature view held then (the latest row of that entity at or before that time, within the
view's TTL). Feast 0.67's file offline store (dask) has limits this works around:

- **Many small files are slow.** The writer appends one parquet file per batch (about one a second), and
  dask's join cost grows with the file count: measured here, 10,000 rows asked over 250 files of 200 rows
  took 124 s; over the same 50,000 rows in one file, 1.6 s. So `features` first compacts: every file is
  merged into one (written as `.tmp` and renamed, then the merged files are removed). A lock file in the directory
  keeps a compaction from deleting files under a concurrent retrieval of another retrain worker on this
  host; the writer only ever adds new files, so it needs no lock.
- **Unknown entities break dask.** Once there are several files, an entity_df entity without any row
  makes dask fail ("Divisions calculation failed"): only entities the files hold are asked about.
- **Same entity and timestamp collapse.** entity_df rows with the same entity and timestamp come back as
  one row: each distinct key is asked once and its answer is given to every row with that key.

A key Feast has no row for (nothing written at or before that time within the TTL) is answered None.
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
from typing import Any

from driftloop.errors import DriftloopError
from driftloop.features.feast_repo import TIMESTAMP_COLUMN, feature_view_name, input_types, offline_dir, repo_config
from driftloop.settings import Settings
from driftloop.spec import PipelineSpec

_LOG = logging.getLogger("driftloop.retrain.feast_offline")
LOCK_FILE = ".retrain.lock"  # not *.parquet: Feast's reader skips it


@dataclass(frozen=True)
class Compaction:
    files: int  # files merged (0: there was at most one)
    rows: int
    seconds: float


class OfflineHistory:
    """The feature view's offline store, read through one FeatureStore (built once: Feast is slow to load)."""

    def __init__(self, settings: Settings, spec: PipelineSpec):
        from feast import FeatureStore, RepoConfig
        from feast.errors import FeatureViewNotFoundException

        # Configured from the settings, as the writer is, not from whatever feature_store.yaml is on disk.
        config = RepoConfig(**repo_config(settings, spec))
        config.repo_path = settings.feast_repo.resolve()
        self._store = FeatureStore(repo_path=str(config.repo_path), config=config)
        try:
            self._store.get_feature_view(feature_view_name(spec))
        except (FeatureViewNotFoundException, FileNotFoundError):  # no such view, or no registry at all
            raise DriftloopError(f"the Feast feature view {feature_view_name(spec)!r} is not registered in "
                                 f"{config.registry.path}: `driftloop up` applies it") from None
        self._inputs = spec.model_inputs
        self._entity = spec.events.entity
        self._types = input_types(spec)
        self._refs = [f"{feature_view_name(spec)}:{name}" for name in spec.model_inputs]
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

    def _files(self) -> list:
        return sorted(self.directory.glob("*.parquet"))  # not *.tmp: files still being written

    def compact(self) -> Compaction:
        """Merge every offline file into one; rows are kept exactly (same schema, same values)."""
        import pyarrow.parquet as pq

        started = time.perf_counter()
        with self._locked(exclusive=True):
            files = self._files()
            if len(files) <= 1:
                return Compaction(0, 0, time.perf_counter() - started)
            table = pq.read_table(files)
            name = f"{time.time_ns()}-compacted-{uuid.uuid4().hex[:8]}.parquet"
            partial = self.directory / (name + ".tmp")
            pq.write_table(table, partial)
            os.replace(partial, self.directory / name)
            for path in files:
                path.unlink(missing_ok=True)
        result = Compaction(len(files), table.num_rows, time.perf_counter() - started)
        _LOG.info("compacted %d offline files (%d rows) into %s in %.1fs", result.files, result.rows, name,
                  result.seconds)
        return result

    def written_entities(self) -> set[Any]:
        """Every entity with at least one row in the offline store."""
        import pyarrow.parquet as pq

        with self._locked(exclusive=False):
            files = self._files()
            if not files:
                return set()
            return set(pq.read_table(files, columns=[self._entity]).column(self._entity).unique().to_pylist())

    def features(self, keys: Sequence[tuple[Any, int]]) -> list[dict[str, Any] | None]:
        """Feast's vector (model inputs, typed as the scorer's rows) for each (entity, epoch microseconds)."""
        import pandas as pd

        self.compact()
        present = self.written_entities()
        asked = sorted({key for key in keys if key[0] in present}, key=lambda key: key[1])
        if not asked:
            return [None] * len(keys)
        entity_df = pd.DataFrame({self._entity: [entity for entity, _ in asked],
                                  TIMESTAMP_COLUMN: pd.to_datetime([us for _, us in asked], unit="us", utc=True)})
        with self._locked(exclusive=False):
            frame = self._store.get_historical_features(entity_df=entity_df, features=self._refs).to_df()
        # back to integer microseconds, whatever time unit Feast's frame uses
        micros = (frame[TIMESTAMP_COLUMN] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
        answers = {}
        for entity, us, values in zip(frame[self._entity].tolist(), micros.tolist(),
                                      frame[list(self._inputs)].to_dict("records")):
            answers[(entity, us)] = {name: _python(value, self._types[name]) for name, value in values.items()}
        return [answers.get(key) for key in keys]

def _python(value: Any, kind: str) -> Any:
    """A value of Feast's DataFrame as the scorer's row holds it: float, int, bool, str, or None when missing."""
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)
