"""Model-input rows converted for each consumer; the columns themselves are `driftloop.schema.model_inputs`.

A row is a dict name -> value: a float for features and int/float fields, a bool for bool fields, a
str for category fields ("__unseen__" marks a category outside the spec's `values`), None for a missing
optional field. Every flavor and the registry go through these helpers so they agree on types.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from driftloop.schema import ModelInput
from driftloop.spec import MISSING

if TYPE_CHECKING:
    import pandas as pd

Row = Mapping[str, Any]
# River models saved before driftloop/schema.py pickled their columns under this name (RiverModel.load
# reads only their name and kind).
InputColumn = ModelInput


def is_missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    # pandas is imported only where frames are built (training, drift), not where the worker scores:
    # without it, no value can be its NA.
    pandas = sys.modules.get("pandas")
    return pandas is not None and value is pandas.NA


def as_float(value: Any) -> float | None:
    """A numeric or bool value as a float; None (or NaN) stays None."""
    return None if is_missing(value) else float(value)


def as_category(value: Any) -> str:
    return MISSING if is_missing(value) else str(value)


def rows_to_frame(columns: Sequence[ModelInput], rows: Sequence[Row]) -> pd.DataFrame:
    """Rows as a typed DataFrame: float64 (NaN for missing), nullable boolean, and str/None objects.

    This is the shape of the reference sample (reference.parquet) and of the MLflow signature.
    """
    import pandas as pd

    data: dict[str, Any] = {}
    for col in columns:
        values: list[Any] = [row[col.name] if col.name in row else None for row in rows]
        if col.kind == "numeric":
            data[col.name] = np.array([np.nan if is_missing(v) else float(v) for v in values], dtype=np.float64)
        elif col.kind == "bool":
            data[col.name] = pd.array([None if is_missing(v) else bool(v) for v in values], dtype="boolean")
        else:
            data[col.name] = pd.Series([None if is_missing(v) else str(v) for v in values], dtype=object)
    return pd.DataFrame(data, columns=[c.name for c in columns])


def frame_to_rows(columns: Sequence[ModelInput], frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The inverse of rows_to_frame: NaN/NA become None, numpy scalars become Python ones."""
    import pandas as pd

    out: list[dict[str, Any]] = [{} for _ in range(len(frame))]
    for col in columns:
        series = frame[col.name] if col.name in frame.columns else pd.Series([None] * len(frame))
        for row, value in zip(out, series.tolist()):
            if is_missing(value):
                row[col.name] = None
            elif col.kind == "numeric":
                row[col.name] = float(value)
            elif col.kind == "bool":
                row[col.name] = bool(value)
            else:
                row[col.name] = str(value)
    return out
