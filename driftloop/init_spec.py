"""`driftloop init-spec TABLE`: a commented pipeline spec from a CSV or Parquet table.

What it decides, and says in the spec's comments:
- each column's field type and range from the data (numbers: int or float with the observed min and max;
  few distinct texts: a category with its values; timestamps; other text: a string, not a model input);
  a column with empty cells is optional; a column whose name cannot be a field is left out, and said so;
- the label: `--label`, else a column named like one (label, class, target, ...) with two values, else the
  last two-valued column; a guess is printed;
- the id, entity and time fields: the table's own (`--id`, `--entity`, `--time`, else by name and type), or
  generated ones that `driftloop replay` makes up, as the spec's `replay` section says (an id per row, one
  entity, rows `replay.time_step` apart);
- the time step: the median gap of the time column, else `--time-step` (no guess: a wrong step makes the
  windows meaningless);
- windows of about WINDOW_ROWS rows on the first numeric fields, and a feature TTL that holds them;
- the model: `--flavor` among the flavors the spec validator accepts (default river) with the reason.
The spec is validated before it is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from driftloop.errors import DriftloopError
from driftloop.spec import TIMESTAMP_COLUMN, parse_duration, parse_spec

SAMPLE_ROWS = 200_000  # enough to see a table's types and ranges; a larger one is read this far
MAX_CATEGORIES = 50
WINDOW_ROWS = 24  # a window holds about this many rows: the recent level of a field
WINDOWED_FIELDS = 3
LABEL_NAMES = ("label", "class", "target", "y", "outcome", "is_fraud", "fraud", "churn", "default")
ENTITY_NAMES = ("entity", "user_id", "customer_id", "account_id", "card_id", "device_id", "user", "customer", "account")
GENERATED = {"id": "event_id", "entity": "entity", "time": "event_time"}
NICE_DURATIONS = ("1m", "10m", "1h", "6h", "12h", "1d", "7d", "28d", "91d", "365d")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = {TIMESTAMP_COLUMN, "label", "probabilities"}  # the Feast offline time column; ONNX outputs
FLAVOR_REASONS = {
    "river": "learns from every outcome as it arrives, so it serves from the first event (no first training) and "
    "follows the stream between retrainings",
    "onnx": "a batch-trained scikit-learn model exported to ONNX: a River placeholder serves until "
    "model.warmup labelled events arrived, then the loop trains it",
    "sklearn": "more of scikit-learn's classifiers, batch-trained and exported to ONNX as the onnx flavor is",
}


def accepted_flavors() -> tuple[str, ...]:
    """The model flavors the spec validator accepts: the flavor registry's."""
    from driftloop.models.flavors import FLAVORS

    return tuple(FLAVORS)


@dataclass
class Choices:
    """What the user asked for; None: let init-spec decide (and say so)."""

    label: str | None = None
    id: str | None = None
    entity: str | None = None
    time: str | None = None
    time_step: float | None = None
    flavor: str = "river"
    estimator: str = "logistic_regression"
    name: str | None = None


@dataclass
class Field:
    name: str
    spec: dict[str, Any]
    note: str = ""


@dataclass
class Draft:
    """The spec being written: its fields, its choices and the sentences that explain them."""

    name: str
    fields: list[Field] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # id / entity / time -> field name
    generated: set[str] = field(default_factory=set)  # of "id", "entity", "time"
    notes: dict[str, str] = field(default_factory=dict)  # id / entity / time / label / skipped -> why
    label: str = ""
    time_step: float | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)
    window: str | None = None
    feature_ttl: str = "1d"


def read_sample(path: Path) -> pd.DataFrame:
    """The table's first SAMPLE_ROWS rows, with pandas' own type inference (the spec is what decides later)."""
    if not path.is_file():
        raise DriftloopError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, nrows=SAMPLE_ROWS)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path).head(SAMPLE_ROWS)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, ImportError) as exc:
        raise DriftloopError(f"{path}: cannot read the table: {str(exc).splitlines()[0]}") from None
    raise DriftloopError(f"{path}: init-spec reads .csv or .parquet files, not {suffix or 'files without a suffix'}")


def draft_spec(frame: pd.DataFrame, choices: Choices, table_name: str, say: Callable[[str], None]) -> Draft:
    if frame.empty:
        raise DriftloopError("the table has no rows: init-spec reads the types and ranges from the data")
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    for flag, column in (
        ("--label", choices.label),
        ("--id", choices.id),
        ("--entity", choices.entity),
        ("--time", choices.time),
    ):
        if column is not None and column not in columns:
            raise DriftloopError(f"{flag} {column!r} is not a column of the table; its columns: {', '.join(columns)}")
    draft = Draft(_pipeline_name(choices.name or table_name))
    draft.label = _label(frame, choices.label, say)
    usable, skipped = [], []
    for column in columns:
        if column == draft.label:
            continue
        if not _IDENTIFIER.match(column) or column in _RESERVED or column.startswith("__"):
            skipped.append(column)
        elif frame[column].isna().all():
            skipped.append(column)
        else:
            usable.append(column)
    if skipped:
        draft.notes["skipped"] = (
            f"left out: {', '.join(map(repr, skipped))} (a field is named like its column, "
            "which must be an identifier, not reserved and not empty; rename the column to use "
            "it)"
        )
        say(draft.notes["skipped"])
    kinds = {column: _kind(frame[column]) for column in usable}
    _keys(frame, usable, kinds, choices, draft)
    draft.time_step = _time_step(frame, draft, choices)
    for column in usable:
        draft.fields.append(_field(column, frame[column], kinds[column], draft))
    made = []
    for role, kind in (
        ("id", {"type": "string", "max_length": 64}),
        ("entity", {"type": "string", "max_length": 64}),
        ("time", {"type": "timestamp"}),
    ):
        if role in draft.generated:
            draft.keys[role] = _free_name(GENERATED[role], columns)
            made.append(Field(draft.keys[role], kind, "generated by `driftloop replay` (the table has none)"))
    draft.fields = made + draft.fields
    _windows(draft)
    return draft


def _pipeline_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_") or "my_pipeline"
    return name if name[0].isalnum() else f"p{name}"


def _two_valued(series: pd.Series) -> bool:
    values = set(series.dropna().astype(str).str.strip().str.lower())
    return len(values) == 2 and values <= {"0", "1", "0.0", "1.0", "true", "false"}


def _label(frame: pd.DataFrame, asked: str | None, say: Callable[[str], None]) -> str:
    if asked is not None:
        if not _two_valued(frame[asked]):
            seen = sorted(set(frame[asked].dropna().astype(str)))[:5]
            raise DriftloopError(
                f"--label {asked!r}: a label is 0/1 (or true/false) in every row; this column holds "
                f"{', '.join(map(repr, seen))}{' ...' if len(seen) == 5 else ''}: map it to 0/1 first"
            )
        return asked
    binary = [column for column in frame.columns if _two_valued(frame[column])]
    named = [column for column in binary if column.lower() in LABEL_NAMES]
    if not binary:
        raise DriftloopError(
            "no column holds a 0/1 (or true/false) label; add one, or name it with --label once it is 0/1"
        )
    guess = named[0] if named else binary[-1]
    why = "its name says so" if named else "the last column with only 0/1 values"
    say(f"label: guessed {guess!r} ({why}); pass --label to choose another")
    return guess


def _kind(series: pd.Series) -> str:
    values = series.dropna()
    if pd.api.types.is_bool_dtype(values) or _two_valued(values) and not pd.api.types.is_numeric_dtype(values):
        return "bool"
    if pd.api.types.is_datetime64_any_dtype(values):
        return "timestamp"
    if pd.api.types.is_integer_dtype(values) or (
        pd.api.types.is_float_dtype(values)
        and (values == values.round()).all()
        and values.abs().max() < 2**53
        and series.isna().any()
    ):
        return "int"
    if pd.api.types.is_numeric_dtype(values):
        return "float"
    text = values.astype(str)
    parsed = pd.to_datetime(text.head(1000), errors="coerce", utc=True, format="mixed")
    if parsed.notna().mean() >= 0.99 and text.str.contains(r"\d[-/:T]\d", regex=True).all():
        return "timestamp"
    distinct = text.nunique()
    if distinct <= MAX_CATEGORIES and distinct <= max(2, len(text) // 10):
        return "category"
    return "string"


def _keys(frame: pd.DataFrame, usable: list[str], kinds: dict[str, str], choices: Choices, draft: Draft) -> None:
    """Which columns are the id, the entity and the time, or that replay generates them."""
    keyable = [c for c in usable if kinds[c] in ("int", "string", "category")]
    unique = [c for c in keyable if frame[c].notna().all() and frame[c].is_unique]
    picks = {
        "id": choices.id
        or next((c for c in unique if c.lower() in ("id", "event_id") or c.lower().endswith("_id")), None),
        "entity": choices.entity
        or next((c for c in keyable if c.lower() in ENTITY_NAMES and not frame[c].is_unique), None),
        "time": choices.time or next((c for c in usable if kinds[c] == "timestamp"), None),
    }
    for role, column in picks.items():
        if column is None:
            draft.generated.add(role)
            continue
        if role == "time" and kinds[column] != "timestamp":
            raise DriftloopError(f"--time {column!r}: its values are not times (ISO-8601 text or a datetime column)")
        if role == "id" and not (frame[column].notna().all() and frame[column].is_unique):
            raise DriftloopError(f"--id {column!r}: an event id must be set and unique in every row, and is not here")
        draft.keys[role] = column
        kinds[column] = "timestamp" if role == "time" else "key"


def _time_step(frame: pd.DataFrame, draft: Draft, choices: Choices) -> float | None:
    if "time" not in draft.generated:
        times = pd.to_datetime(frame[draft.keys["time"]], errors="coerce", utc=True, format="mixed").dropna()
        gaps = times.sort_values().diff().dt.total_seconds()
        gaps = gaps[gaps > 0]
        inferred = float(gaps.median()) if len(gaps) else None
        return choices.time_step or inferred
    if choices.time_step is None:
        raise DriftloopError(
            "the table has no time column, so its rows' spacing cannot be read from it: say how far "
            "apart they are with --time-step (e.g. 30m, 1h, 1d for a daily table); `driftloop "
            "replay` then spaces the events that far apart"
        )
    return choices.time_step


def _field(column: str, series: pd.Series, kind: str, draft: Draft) -> Field:
    values = series.dropna()
    optional = series.isna().any()
    note = f"{int(series.isna().sum())} empty cells" if optional else ""
    role = next((r for r, c in draft.keys.items() if c == column), None)
    if role is not None:
        spec: dict[str, Any] = (
            {"type": "timestamp"} if role == "time" else {"type": "string", "max_length": _max_length(values)}
        )
        return Field(
            column,
            spec,
            f"the event {role}" + (" (the Feast entity: windows are per value)" if role == "entity" else ""),
        )
    if kind in ("int", "float"):
        low, high = values.min(), values.max()
        spec = {"type": kind, "min": _number(low, kind), "max": _number(high, kind)}
    elif kind == "category":
        spec = {"type": "category", "values": sorted(values.astype(str).unique().tolist())}
        note = ", ".join(filter(None, [f"the {len(spec['values'])} values seen; others count as unseen", note]))
    elif kind == "string":
        spec = {"type": "string", "max_length": _max_length(values)}
        note = ", ".join(filter(None, ["free text: not a model input", note]))
    else:
        spec = {"type": kind}
    if optional:
        spec["required"] = False
    return Field(column, spec, note)


def _number(value: Any, kind: str) -> int | float:
    return int(value) if kind == "int" else float(value)


def _max_length(values: pd.Series) -> int:
    longest = int(values.astype(str).str.len().max()) if len(values) else 1
    return max(16, 2 * longest)


def _free_name(name: str, taken: list[str]) -> str:
    while name in taken:
        name = f"{name}_"
    return name


def duration_text(seconds: float) -> str:
    """Seconds as the spec writes durations: the largest unit that divides them ('1d', '30m', '90s')."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{max(1, round(seconds))}s"


def _windows(draft: Draft) -> None:
    """Mean windows of about WINDOW_ROWS rows on the first numeric fields, and a TTL that holds the longest."""
    step = draft.time_step or 1.0
    size = next((d for d in NICE_DURATIONS if parse_duration(d) >= WINDOW_ROWS * step), None)
    if size is None:
        size = duration_text(math.ceil(WINDOW_ROWS * step / 86400) * 86400)
    numeric = [f.name for f in draft.fields if f.spec["type"] in ("int", "float")][:WINDOWED_FIELDS]
    draft.window = size
    draft.windows = [
        {"name": f"{name}_mean_{size}", "agg": "mean", "field": name, "window": {"size": size, "kind": "sliding"}}
        for name in numeric
    ]
    seconds = parse_duration(size)
    # longer than the window by a day (or by itself, for windows under a day): Feast expires older features
    draft.feature_ttl = duration_text(seconds + 86400 if seconds >= 86400 else 2 * seconds)


# --- writing ----------------------------------------------------------------------------------------------


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False).strip()


def render(draft: Draft, choices: Choices, table: Path, rows: int, output: Path) -> str:
    reason = FLAVOR_REASONS.get(choices.flavor, f"{choices.flavor}, the flavor asked for with --flavor")
    step = duration_text(draft.time_step) if draft.time_step else None
    lines = [
        f"# Written by `driftloop init-spec {table}` from its first {rows:,} rows: read it, change what the data",
        "# could not tell, then check it and replay the table on a running stack:",
        f"#   driftloop check-spec {output}",
        f"#   DRIFTLOOP_SPEC={output} driftloop up",
        f"#   driftloop replay {table} --spec {output}",
        f"name: {draft.name}",
        "",
        "events:",
    ]
    for role in ("id", "entity", "time"):
        key = {"id": "id_field", "entity": "entity", "time": "time_field"}[role]
        how = "generated by `driftloop replay`" if role in draft.generated else "a column of the table"
        lines.append(f"  {key}: {draft.keys[role]}  # {how}")
    lines.append("  fields:  # numbers: the range seen; a value outside it is dead-lettered (out_of_range)")
    for f in draft.fields:
        lines.append(f"    {f.name}: {_flow(f.spec)}" + (f"  # {f.note}" if f.note else ""))
    if "skipped" in draft.notes:
        lines.append(f"    # {draft.notes['skipped']}")
    lines += [
        "",
        "outcomes:",
        "  id_field: event_id",
        f"  label: {draft.label}  # 0/1, sent as the outcome of its event",
        "  time_field: outcome_time",
        "",
    ]
    if draft.windows:
        lines.append(
            f"# The recent level of the first numeric fields, over {draft.window}: at least {WINDOW_ROWS} "
            f"rows {step or '?'} apart. Other aggregations: docs/spec.md."
        )
        lines.append("features:")
        lines += [f"  - {_flow(w)}" for w in draft.windows]
    else:
        lines.append("features: []  # no numeric field to window")
    lines += [
        f"feature_ttl: {draft.feature_ttl}  # longer than every window: Feast expires features older than this",
        "",
        f"# {choices.flavor}/{choices.estimator}: {reason}.",
        f"# Flavors the validator accepts: {', '.join(accepted_flavors())} (init-spec --flavor).",
        "model:",
        f"  name: {draft.name}",
        f"  flavor: {choices.flavor}",
        f"  estimator: {choices.estimator}",
        "",
    ]
    replay: dict[str, str | None] = {}
    if "entity" in draft.generated:
        replay["entity_value"] = "all"
    if "time" in draft.generated:
        replay["time_step"] = step
    if replay:
        lines.append("# What `driftloop replay` makes up for the columns the table lacks (its flags override these).")
        lines.append("replay:")
        lines += [f"  {key}: {value}" for key, value in replay.items()]
    else:
        lines.append("# `driftloop replay` needs nothing made up: the table has an id, an entity and a time column.")
    return "\n".join(lines) + "\n"


def init_spec(table: Path, output: Path, choices: Choices, *, force: bool, say: Callable[[str], None]) -> Path:
    if choices.flavor not in accepted_flavors():
        raise DriftloopError(f"--flavor {choices.flavor!r}: the spec validator accepts {', '.join(accepted_flavors())}")
    if output.exists() and not force:
        raise DriftloopError(f"{output} exists; choose another with -o, or --force to replace it")
    frame = read_sample(table)
    draft = draft_spec(frame, choices, table.stem, say)
    text = render(draft, choices, table, len(frame), output)
    parse_spec(yaml.safe_load(text), str(output))  # what is written is a valid spec, or nothing is
    output.write_text(text)
    return output
