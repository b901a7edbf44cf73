"""Feast's offline rows as Arrow: the files' schema, from the spec, and a batch of rows checked against it.

Apart from features/feast/writer.py so that the process that only queues rows for a writer process (the
scoring worker) does not import pyarrow (~30 MB of libraries).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from driftloop.schema import model_inputs
from driftloop.spec import TIMESTAMP_COLUMN, PipelineSpec

_TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
# The value types each column type takes (null: every value of the batch is None).
_ACCEPTS = {
    pa.float64(): {pa.float64(), pa.int64(), pa.null()},
    pa.int64(): {pa.int64(), pa.null()},
    pa.bool_(): {pa.bool_(), pa.null()},
    pa.string(): {pa.string(), pa.null()},
}


def arrow_schema(spec: PipelineSpec) -> pa.Schema:
    """The offline files' schema: entity key, event timestamp, then the model inputs in order."""
    entity_type = spec.events.fields[spec.events.entity].type
    return pa.schema(
        [
            pa.field(spec.events.entity, pa.int64() if entity_type == "int" else pa.string()),
            pa.field(TIMESTAMP_COLUMN, _TIMESTAMP_TYPE),
        ]
        + [pa.field(i.name, pa.type_for_alias(i.stored_as.arrow)) for i in model_inputs(spec)]
    )


def rows_to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows -> one arrow table of exactly `schema`; a missing or mistyped value raises ValueError naming its column."""
    columns = []
    for field in schema:
        try:
            values = [row[field.name] for row in rows]
        except KeyError:
            raise ValueError(f"a row has no {field.name!r}") from None
        try:
            if field.name == TIMESTAMP_COLUMN:
                columns.append(pa.array([round(seconds * 1_000_000) for seconds in values], type=field.type))
                continue
            # Inferred, then checked and cast: pa.array(values, type=int64) would silently truncate 3.5 to 3.
            array = pa.array(values)
            if array.type not in _ACCEPTS[field.type]:
                raise ValueError(f"holds {array.type} values")
            columns.append(array.cast(field.type))
        except (TypeError, ValueError) as exc:  # arrow's errors derive from these and do not name the column
            expected = "epoch seconds" if field.name == TIMESTAMP_COLUMN else field.type
            raise ValueError(f"{field.name!r} must be {expected}: {exc}") from None
    return pa.Table.from_arrays(columns, schema=schema)
