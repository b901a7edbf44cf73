"""`driftloop replay`: backtest the running pipeline on a table (CSV or Parquet).

Every row becomes one event and one outcome on the running stack; the predictions and dead letters
that come back for this run are matched to their rows, and the predictions are scored prequentially,
in row order, against the rows' labels.

Row to event (the spec decides, nothing else): each `events.fields` name is read from the
same-named column and converted to the field's type where the value allows it (a value that does not
convert is sent as it is, so the pipeline dead-letters it with a reason). Without a column of their
own, the event id is `<run id>-<row index>` (a fresh run id each replay, so a second replay is not
deduplicated), the entity is `entity_value`, and the event time is `start + index * time_step`
(default start: on a whole multiple of the step, such that the last row lies less than one step in
the past, so no event is in the future). `entity_value` and `time_step` default to the spec's `replay`
section; a table without a time column needs a time step from one or the other. Columns the spec does not
name are ignored; the label column (`outcomes.label`) is never part of the event.

Outcomes (`{id_field, label: 0/1, time_field}`, key = event id) go out `label_delay` events after
their event (0: right after it, i.e. test-then-train for an online model), or `label_delay_seconds`
of wall-clock time after it. Their time is the replayed stream's clock when they are sent: the
latest event time produced so far.

Collecting: the predictions topic and `<events>.dlq` are read from where they ended before the
run's first event (see `RunCollector`), keeping the records whose event id belongs to this run,
until every row is accounted for or nothing of this run has arrived for `timeout` seconds.

Never retrained: beside the live figures, the version that was champion when the replay started is scored
on this run's labeled records as if nothing had ever been retrained or promoted (`load/never_retrained.py`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from tqdm import tqdm

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.load.generator import _send
from driftloop.load.never_retrained import NeverRetrained
from driftloop.settings import Settings
from driftloop.spec import FieldSpec, PipelineSpec, load_spec
from driftloop.stack import resolve_bootstrap
from driftloop.streams.contracts import iso_time

_decode = msgspec.json.Decoder().decode
_BOOL_TEXT = {"0": False, "1": True, "0.0": False, "1.0": True, "false": False, "true": True}


# --- the table ------------------------------------------------------------------------------------


def read_table(path: str | Path, limit: int | None = None) -> pd.DataFrame:
    """The first `limit` rows (all when None) of a .csv or .parquet file; CSV cells are read as text."""
    path = Path(path)
    if not path.is_file():
        raise DriftloopError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            # As text: the spec, not pandas' guess, decides each column's type ("007" stays a category).
            return pd.read_csv(path, dtype=str, nrows=limit)
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            return frame if limit is None else frame.head(limit)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, ImportError) as exc:
        raise DriftloopError(f"{path}: cannot read the table: {str(exc).splitlines()[0]}") from None
    raise DriftloopError(f"{path}: replay reads .csv or .parquet files, not {suffix or 'files without a suffix'}")


@dataclass(frozen=True, slots=True)
class ReplayRow:
    event_id: str  # as predictions and dead letters name it
    key: str | None  # the event's Kafka key: its entity
    event: dict[str, Any]  # the event as produced
    label: int
    event_time: float | None  # epoch seconds; None when the table's value cannot be read as a time


def table_rows(
    spec: PipelineSpec,
    frame: pd.DataFrame,
    *,
    origin: str,
    run_id: str,
    entity_value: str | None = None,
    start: datetime | None = None,
    time_step: float | None = None,
    now: Callable[[], float] = time.time,
) -> list[ReplayRow]:
    """The table as events plus labels, by the module docstring's rules; DriftloopError for a table that
    cannot be replayed (no label column, a required column missing, a label that is not 0/1, ids that
    are empty or repeated, no time column and no time step). `origin` names the table in those errors."""
    ev = spec.events
    columns = set(frame.columns)
    entity_value = spec.replay.entity_value if entity_value is None else entity_value
    time_step = time_step or spec.replay.time_step
    if ev.time_field not in columns and time_step is None:
        raise DriftloopError(
            f"{origin}: no time column {ev.time_field!r}, and spec {spec.name!r} sets no "
            f"replay.time_step: say how far apart the rows are, in the spec (replay: {{time_step: "
            f"1d}}) or with --time-step (e.g. 30m, 1h, 1d)"
        )
    label = spec.outcomes.label
    if label not in columns:
        raise DriftloopError(
            f"{origin}: no label column {label!r} (the spec's outcomes.label); "
            f"columns: {', '.join(map(str, frame.columns))}"
        )
    generated = {ev.id_field, ev.entity, ev.time_field}  # replay makes these up when the table lacks them
    missing = [name for name, f in ev.fields.items() if f.required and name not in columns and name not in generated]
    if missing:
        raise DriftloopError(
            f"{origin}: missing columns for required fields of spec {spec.name!r}: {', '.join(missing)}"
        )
    count = len(frame)
    labels = [_label(value, origin, index, label) for index, value in enumerate(frame[label].tolist())]
    values = {
        name: list(map(_converter(f), frame[name].tolist()))
        for name, f in ev.fields.items()
        if name in columns and name not in generated
    }

    if ev.id_field in columns:
        ids = [_key(ev.fields[ev.id_field], v) for v in frame[ev.id_field].tolist()]
        _require_unique_ids(ids, origin, ev.id_field)
    elif ev.fields[ev.id_field].type == "int":
        ids = [int(run_id, 16) * 10**9 + index for index in range(count)]  # run ids are 8 hex digits
    else:
        ids = [f"{run_id}-{index}" for index in range(count)]
    entity_field = ev.fields[ev.entity]
    if ev.entity in columns:
        entities = [_key(entity_field, v) for v in frame[ev.entity].tolist()]
    else:
        entities = [_key(entity_field, entity_value)] * count
    if ev.time_field in columns:
        times = list(map(_converter(ev.fields[ev.time_field]), frame[ev.time_field].tolist()))
        seconds: list[float | None] = [_epoch_seconds(t) for t in times]
    else:
        # by default on whole steps, the last row at the latest one that is not in the future
        assert time_step is not None  # refused above without a time column
        first = (now() // time_step - count + 1) * time_step if start is None else _aware(start).timestamp()
        steps = [first + index * time_step for index in range(count)]
        seconds, times = list(steps), [iso_time(s) for s in steps]

    rows = []
    for index in range(count):
        event = {ev.id_field: ids[index], ev.entity: entities[index], ev.time_field: times[index]}
        for name, column in values.items():
            if column[index] is not None:
                event[name] = column[index]
        entity = entities[index]
        rows.append(
            ReplayRow(str(ids[index]), None if entity is None else str(entity), event, labels[index], seconds[index])
        )
    return rows


def _label(value: Any, origin: str, index: int, column: str) -> int:
    if _absent(value):
        raise DriftloopError(f"{origin}: row {index}, column {column!r}: the label is empty")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
        return int(_BOOL_TEXT[value.strip().lower()])
    raise DriftloopError(f"{origin}: row {index}, column {column!r}: {value!r} is not a 0/1 label")


def _require_unique_ids(ids: list[Any], origin: str, column: str) -> None:
    """Predictions and dead letters name their row by event id, so every row needs its own."""
    first_row: dict[Any, int] = {}
    for index, event_id in enumerate(ids):
        if event_id is None or event_id == "":
            raise DriftloopError(f"{origin}: row {index}, column {column!r}: the event id is empty")
        if event_id in first_row:
            raise DriftloopError(
                f"{origin}: rows {first_row[event_id]} and {index}, column {column!r}: "
                f"the same event id {event_id!r}; replay needs one id per row"
            )
        first_row[event_id] = index


def _absent(value: Any) -> bool:
    """An empty cell: None, NaN (empty CSV cells), or pandas' NA and NaT (Parquet)."""
    return value is None or (type(value) is float and value != value) or value is pd.NA or value is pd.NaT


def _converter(spec: FieldSpec) -> Callable[[Any], Any]:
    """Cell -> the field's JSON type (None for an empty cell); a cell that does not convert goes out as it is."""
    kind = spec.type
    convert: Callable[[Any], Any]
    if kind == "float":
        convert = partial(_number, kind=float)
    elif kind == "int":
        convert = partial(_number, kind=int)
    elif kind == "bool":
        convert = _bool
    elif kind == "category":
        convert = partial(_category, known=frozenset(spec.values or ()))
    elif kind == "timestamp":
        convert = _timestamp
    else:
        convert = _text

    def cell(value: Any) -> Any:
        return None if _absent(value) else convert(value)

    return cell


def _bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return _BOOL_TEXT.get(value.strip().lower(), value) if isinstance(value, str) else value


def _category(value: Any, known: frozenset[str]) -> str:
    text = _text(value)
    # a float column holding integer codes reads 3.0: "3", unless the spec lists "3.0" itself
    return str(value) if text not in known and str(value) in known else text


def _number(value: Any, kind: type) -> Any:
    """`value` as an int or float when it is one (or its text is); anything else as it is."""
    if isinstance(value, bool):
        return value  # true is no number: the validator says wrong_type
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            try:
                value = float(value)  # "3.0" in an int column
            except ValueError:
                return value
    if kind is int and isinstance(value, float):
        return int(value) if value.is_integer() else value
    return float(value) if kind is float and isinstance(value, int) else value


def _key(spec: FieldSpec, value: Any) -> Any:
    """An id or entity value: text, or a whole number for an int field."""
    if _absent(value):
        return None
    return _number(value, int) if spec.type == "int" else _text(value)


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _timestamp(value: Any) -> Any:
    """Epoch seconds (also as text: CSV cells are text) as a number, ISO text as it is, datetimes
    (Parquet) as ISO text with naive meaning UTC."""
    if isinstance(value, datetime):
        return iso_time(_aware(value).timestamp())
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _epoch_seconds(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return _aware(datetime.fromisoformat(value)).timestamp()
        except ValueError:
            return None
    return None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- what comes back ------------------------------------------------------------------------------


class RunCollector:
    """This run's predictions and dead letters, read from where their topics ended before the run.

    The partitions are assigned at their end and the constructor returns only once every partition
    has reported end-of-partition (or delivered a record), so the positions are fixed before the run's
    first event exists. (Tansu's ListOffsets can resolve the end too low; the consumer then first reads
    an old tail, which the event-id filter drops.) No consumer group is joined and nothing is committed.

    `row_of` maps each event id of this run to its row. A row's first prediction counts; later ones
    (a worker re-emitting after a crash) are counted as duplicates.
    """

    def __init__(
        self,
        bootstrap: str,
        predictions_topic: str,
        dlq_topic: str,
        id_field: str,
        row_of: Mapping[str, int],
        *,
        position_timeout: float = 15.0,
    ):
        self.predictions_topic = predictions_topic
        self.id_field = id_field
        self.row_of = row_of
        self.predictions: dict[int, dict[str, Any]] = {}
        self.dead_letters: dict[int, str] = {}  # row -> reason
        self.duplicate_predictions = 0
        self._answered: set[int] = set()  # rows with a prediction or a dead letter
        self.last_arrival: float | None = None  # time.monotonic() of this run's latest record
        # A short fetch wait: an idle partition reports its end after one wait, 500 ms by default.
        self._consumer = kafka.consumer(
            bootstrap,
            f"driftloop-replay-{uuid.uuid4().hex[:10]}",
            **{"enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 100},
        )
        try:
            kafka.assign_at_end(self._consumer, [predictions_topic, dlq_topic], timeout=position_timeout)
        except BaseException:
            self._consumer.close()
            raise

    @property
    def accounted(self) -> int:
        """Rows with a prediction or a dead letter."""
        return len(self._answered)

    @property
    def missing(self) -> int:
        """Rows with neither a prediction nor a dead letter."""
        return len(self.row_of) - self.accounted

    def dead_letter_reasons(self) -> Counter:
        """Reason -> rows dead-lettered without a prediction (a duplicate of a scored event is not counted)."""
        return Counter(reason for row, reason in self.dead_letters.items() if row not in self.predictions)

    def poll(self, timeout: float) -> int:
        """Read what is there (waiting up to `timeout` for the first record); return the rows newly accounted."""
        before = self.accounted
        for message in self._consumer.consume(10_000, timeout=timeout):
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise DriftloopError(f"reading {message.topic()}: {error.str()}")
                continue  # end of partition, or a transient error librdkafka retries
            if message.topic() == self.predictions_topic:
                self._prediction(message.value())
            else:
                self._dead_letter(message.value())
        return self.accounted - before

    def _prediction(self, value: bytes | None) -> None:
        record = _json_object(value)
        row = self.row_of.get(str(record.get("event_id")))
        if row is None:
            return
        self.last_arrival = time.monotonic()
        self._answered.add(row)
        if row in self.predictions:
            self.duplicate_predictions += 1
        else:
            self.predictions[row] = record

    def _dead_letter(self, value: bytes | None) -> None:
        envelope = _json_object(value)
        original = envelope.get("original_utf8")
        row = self.row_of.get(str(_json_object(original.encode()).get(self.id_field))) if original else None
        if row is None:
            return
        self.last_arrival = time.monotonic()
        self._answered.add(row)
        self.dead_letters.setdefault(row, str(envelope.get("reason")))

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> RunCollector:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _json_object(value: bytes | None) -> dict[str, Any]:
    try:
        document = _decode(value) if value is not None else None
    except msgspec.DecodeError:
        return {}
    return document if isinstance(document, dict) else {}


# --- metrics --------------------------------------------------------------------------------------


def prequential_metrics(
    labels: Sequence[int], predictions: Sequence[Mapping[str, Any] | None], deciles: int = 10
) -> dict[str, Any]:
    """Scores of the predictions against the labels, both in row order; a None prediction is a row that got none.

    accuracy/precision/recall/f1 use each prediction's `decision`, log-loss and ROC AUC its `score`,
    all over the predicted rows. `deciles` splits all rows into that many consecutive parts and gives
    the accuracy over each part's predicted rows (None when it has none), so drift shows. The
    baselines score the same rows: "majority class" predicts the label seen most often in the earlier
    rows (0 on a tie), "previous label" predicts the previous row's label (0 for the first row).
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    y = np.asarray(labels, dtype=np.int64)
    scored = np.array([p is not None for p in predictions], dtype=bool)
    truth = y[scored]
    decision = np.array([p["decision"] for p in predictions if p is not None], dtype=np.int64)
    score = np.array([p["score"] for p in predictions if p is not None], dtype=np.float64)

    ones_before = np.concatenate(([0], np.cumsum(y)[:-1])) if len(y) else y
    majority = (ones_before > np.arange(len(y)) - ones_before).astype(np.int64)
    previous = np.concatenate(([0], y[:-1])) if len(y) else y

    result: dict[str, Any] = {
        "rows": len(y),
        "predicted": int(scored.sum()),
        "accuracy": None,
        "precision": None,
        "recall": None,
        "f1": None,
        "log_loss": None,
        "roc_auc": None,
    }
    if len(truth):
        true_positives = int(np.sum((decision == 1) & (truth == 1)))
        precision = _ratio(true_positives, int(np.sum(decision == 1)))
        recall = _ratio(true_positives, int(np.sum(truth == 1)))
        eps = np.finfo(np.float64).eps  # scikit-learn's clipping, so a score of exactly 0 or 1 stays finite
        clipped = np.clip(score, eps, 1 - eps)
        result.update(
            accuracy=float(np.mean(decision == truth)),
            precision=precision,
            recall=recall,
            f1=_ratio(2 * precision * recall, precision + recall),
            log_loss=float(-np.mean(np.where(truth == 1, np.log(clipped), np.log1p(-clipped)))),
            roc_auc=_roc_auc(truth, score),
        )
    result["baselines"] = {
        "majority_class": float(np.mean(majority[scored] == truth)) if len(truth) else None,
        "previous_label": float(np.mean(previous[scored] == truth)) if len(truth) else None,
    }
    correct = np.zeros(len(y), dtype=bool)
    correct[scored] = decision == truth
    result["deciles"] = [
        {
            "rows": [int(part[0]), int(part[-1]) + 1],
            "predicted": int(scored[part].sum()),
            "accuracy": float(correct[part][scored[part]].mean()) if scored[part].any() else None,
        }
        for part in np.array_split(np.arange(len(y)), deciles)
        if len(part)
    ]
    versions = Counter((p["model_name"], p["model_version"], p["variant"]) for p in predictions if p is not None)
    result["model_versions"] = [
        {"model_name": name, "model_version": version, "variant": variant, "predictions": n}
        for (name, version, variant), n in sorted(versions.items())
    ]
    return result


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _roc_auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    """The chance that a random positive row scores above a random negative one (ties count half), i.e.
    the Mann-Whitney U statistic over tie-averaged ranks; None without both classes."""
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if not positives or not negatives:
        return None
    _values, position, ties = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(ties) - (ties - 1) / 2  # 1-based rank, averaged over each group of equal scores
    rank_sum = float(average_rank[position][truth == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


# --- the run --------------------------------------------------------------------------------------


@dataclass
class ReplayReport:
    run_id: str
    table: str
    spec: str
    rows: int
    produced_events: int
    produced_outcomes: int
    produce_seconds: float  # until the last outcome was delivered
    rows_per_s: float  # events produced per second
    predictions_per_s: float | None  # predictions received per second, from the first event produced
    predicted: int
    dead_lettered: int  # rows with a dead letter and no prediction
    missing: int  # rows with neither
    duplicate_predictions: int
    dead_letter_reasons: dict[str, int]
    metrics: dict[str, Any]  # prequential_metrics()
    never_retrained: dict[str, Any] | None = None  # NeverRetrained.score(): the starting champion, kept all along

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        """The human table `driftloop replay` prints."""
        m = self.metrics
        lines = [
            f"replay of {self.table} with spec {self.spec!r}, run {self.run_id}: {self.rows} rows",
            f"produced  {self.produced_events} events and {self.produced_outcomes} outcomes in "
            f"{self.produce_seconds:.1f} s ({self.rows_per_s:.0f} rows/s)",
            f"received  {self.predicted} predictions"
            + (f" ({self.predictions_per_s:.0f}/s)" if self.predictions_per_s else "")
            + f", {self.dead_lettered} dead-lettered, {self.missing} missing"
            + (f", {self.duplicate_predictions} duplicate predictions" if self.duplicate_predictions else ""),
        ]
        if self.dead_letter_reasons:
            lines.append(
                "dead letters  " + ", ".join(f"{reason}: {n}" for reason, n in sorted(self.dead_letter_reasons.items()))
            )
        for version in m["model_versions"]:
            lines.append(
                f"model     {version['model_name']} v{version['model_version']} ({version['variant']}): "
                f"{version['predictions']} predictions"
            )
        baselines = m["baselines"]
        lines += [
            "",
            f"{'':<10}{'model':>8}{'majority class':>16}{'previous label':>16}",
            f"{'accuracy':<10}{_cell(m['accuracy'])}{_cell(baselines['majority_class'], 16)}"
            f"{_cell(baselines['previous_label'], 16)}",
        ]
        lines += [
            f"{key.replace('_', ' '):<10}{_cell(m[key])}"
            for key in ("precision", "recall", "f1", "log_loss", "roc_auc")
        ]
        lines.append("accuracy by tenth of the stream: " + " ".join(_cell(d["accuracy"], 0) for d in m["deciles"]))
        baseline = self.never_retrained
        if baseline is not None:
            lines.append(_never_retrained_line(baseline))
        return "\n".join(lines)


def _never_retrained_line(baseline: dict[str, Any]) -> str:
    if baseline.get("model_version") is None:
        return f"never retrained: not scored: {baseline.get('problem')}"
    return (
        f"never retrained: champion v{baseline['model_version']} as the replay started ({baseline['flavor']}, "
        f"learning {baseline['learning']}): accuracy {_cell(baseline['accuracy'], 0).strip()} on "
        f"{baseline['rows']} labeled rows, where the live pipeline had {_cell(baseline['live_accuracy'], 0).strip()}"
    )


def _cell(value: float | None, width: int = 8) -> str:
    return f"{'-' if value is None else f'{value:.4f}':>{width}}"


def replay(
    settings: Settings,
    path: str | Path,
    *,
    spec: PipelineSpec | None = None,
    label_delay: int = 0,
    label_delay_seconds: float | None = None,
    rate: float | None = None,
    limit: int | None = None,
    entity_value: str | None = None,
    start: datetime | None = None,
    time_step: float | None = None,
    timeout: float = 30.0,
    progress: bool = False,
) -> ReplayReport:
    """Replay the table on the stack the settings point at and score what comes back.

    spec: default `settings.spec`. rate: events per second (None: as fast as possible). timeout: stop
    waiting once nothing of this run has arrived for that many seconds after the last row was
    produced. progress: bars on stderr. Topics come from the settings and are created if missing.
    """
    if label_delay < 0 or (label_delay_seconds is not None and label_delay_seconds < 0):
        raise DriftloopError("the label delay cannot be negative")
    if rate is not None and not rate > 0:
        raise DriftloopError("the rate must be more than 0 events per second")
    spec = spec or load_spec(settings.spec)
    run_id = uuid.uuid4().hex[:8]
    rows = table_rows(
        spec,
        read_table(path, limit),
        origin=str(path),
        run_id=run_id,
        entity_value=entity_value,
        start=start,
        time_step=time_step,
    )
    bootstrap = resolve_bootstrap(settings)
    kafka.ensure_topics(
        bootstrap,
        [settings.topic_events, settings.topic_outcomes, settings.topic_predictions, settings.topic_dlq],
        settings.partitions,
    )
    row_of = {row.event_id: index for index, row in enumerate(rows)}
    baseline = NeverRetrained.at_start(settings, spec)
    with RunCollector(
        bootstrap, settings.topic_predictions, settings.topic_dlq, spec.events.id_field, row_of
    ) as collector:
        started = time.monotonic()
        produced_outcomes, event_seconds = _produce(
            rows,
            bootstrap,
            settings,
            spec,
            collector,
            label_delay=label_delay,
            label_delay_seconds=label_delay_seconds,
            rate=rate,
            progress=progress,
        )
        produce_seconds = time.monotonic() - started
        _wait_for_the_rest(collector, len(rows), timeout, progress)
        predictions = [collector.predictions.get(index) for index in range(len(rows))]
        reasons = collector.dead_letter_reasons()
        answering = (collector.last_arrival - started) if collector.predictions and collector.last_arrival else None
        # the baseline learns each row as late as the live model got its outcome, in rows
        delay_rows = label_delay if label_delay_seconds is None else (round(label_delay_seconds * rate) if rate else 0)
        never_retrained = baseline.score(
            bootstrap, settings.topic_labeled, row_of, len(collector.predictions), delay_rows, timeout
        )
        return ReplayReport(
            run_id=run_id,
            table=str(path),
            spec=spec.name,
            rows=len(rows),
            produced_events=len(rows),
            produced_outcomes=produced_outcomes,
            produce_seconds=round(produce_seconds, 3),
            rows_per_s=round(len(rows) / event_seconds, 1) if event_seconds else float(len(rows)),
            predictions_per_s=round(len(collector.predictions) / answering, 1) if answering else None,
            predicted=len(collector.predictions),
            dead_lettered=sum(reasons.values()),
            missing=collector.missing,
            duplicate_predictions=collector.duplicate_predictions,
            dead_letter_reasons=dict(reasons.most_common()),
            metrics=prequential_metrics([row.label for row in rows], predictions),
            never_retrained=never_retrained,
        )


def _produce(
    rows: list[ReplayRow],
    bootstrap: str,
    settings: Settings,
    spec: PipelineSpec,
    collector: RunCollector,
    *,
    label_delay: int,
    label_delay_seconds: float | None,
    rate: float | None,
    progress: bool,
) -> tuple[int, float]:
    """Produce every event and outcome, reading what comes back meanwhile.

    Returns the outcomes produced and the seconds the events took (without waiting out a label delay)."""
    failures: list[str] = []
    producer = kafka.producer(bootstrap, on_delivery=lambda err, _msg: failures.append(str(err)) if err else None)
    names = spec.outcomes
    waiting: deque[tuple[float, ReplayRow]] = deque()  # (wall-clock due time, row), in row order
    stream_clock: float | None = None  # the latest event time produced: "now" in the replayed world
    outcomes = 0

    def send_outcome(row: ReplayRow) -> None:
        nonlocal outcomes
        outcome: dict[str, Any] = {names.id_field: row.event[spec.events.id_field], names.label: row.label}
        if stream_clock is not None:
            outcome[names.time_field] = iso_time(stream_clock)
        _send(producer, settings.topic_outcomes, row.event_id, _encode(outcome))
        outcomes += 1

    def until(moment: float) -> None:
        """Wait for `moment`, sending the outcomes that fall due meanwhile and reading what comes back."""
        while True:
            while label_delay_seconds is not None and waiting and waiting[0][0] <= time.monotonic():
                send_outcome(waiting.popleft()[1])
            now = time.monotonic()
            if now >= moment:
                return
            producer.poll(0)
            due = waiting[0][0] if label_delay_seconds is not None and waiting else moment
            collector.poll(min(0.1, max(0.0, min(due, moment) - now)))

    started = time.monotonic()
    with tqdm(total=len(rows), desc="produced", unit="rows", disable=not progress, mininterval=0.5) as bar:
        for index, row in enumerate(rows):
            until(started + index / rate if rate is not None else 0.0)
            _send(producer, settings.topic_events, row.key or "", _encode(row.event))
            if row.event_time is not None:
                stream_clock = row.event_time if stream_clock is None else max(stream_clock, row.event_time)
            if label_delay_seconds is None:
                waiting.append((0.0, row))
                if len(waiting) > label_delay:
                    send_outcome(waiting.popleft()[1])
            else:
                waiting.append((time.monotonic() + label_delay_seconds, row))
            producer.poll(0)
            if index % 1000 == 999:  # keep up with what comes back, so arrival times are real
                collector.poll(0)
            bar.update()
        event_seconds = time.monotonic() - started
        if label_delay_seconds is not None and waiting:
            until(waiting[-1][0])
        while waiting:  # the last `label_delay` outcomes, after the last event
            send_outcome(waiting.popleft()[1])
    remaining = producer.flush(60)
    if remaining or failures:
        raise DriftloopError(
            f"{remaining} records still queued and {len(failures)} failed producing to {bootstrap}"
            + (f"; first failure: {failures[0]}" if failures else "")
        )
    return outcomes, event_seconds


def _wait_for_the_rest(collector: RunCollector, rows: int, timeout: float, progress: bool) -> None:
    """Read until every row is accounted for, or nothing of this run came for `timeout` seconds."""
    with tqdm(
        total=rows, initial=collector.accounted, desc="received", unit="rows", disable=not progress, mininterval=0.5
    ) as bar:
        quiet_since = time.monotonic()
        while collector.accounted < rows:
            new = collector.poll(0.2)
            if new:
                bar.update(new)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > timeout:
                return


def _encode(record: dict[str, Any]) -> bytes:
    # default=str: a cell no JSON type fits (a Decimal, bytes) goes out as text; the validator judges it
    return json.dumps(record, separators=(",", ":"), default=str).encode()
