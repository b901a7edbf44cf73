"""The declarative pipeline spec: the single source of truth for schema, features, model, drift and canary policy.

`load_spec(path)` returns a validated `PipelineSpec` or raises a DriftloopError of the form
`<file>: <path.inside[2].spec>: <what is wrong>`.
"""

from __future__ import annotations

import math
import posixpath
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from driftloop.errors import DriftloopError
from driftloop.features.aggregations import AGGREGATIONS
from driftloop.spec_hints import how_to_fix
from driftloop.streams.control.drift.detectors import ConceptDetector, concept_detector

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# What the spec's names become, and the rules of the systems that get them (read in their installed sources):
# - `name` is the Feast project (feast/repo_config.py: letters, digits, '_' and '-', not first '_' or '-';
#   no '-' with a SQLite online store: it goes into table names), the MLflow experiment, and part of
#   every consumer group and internal topic; the longest of those is the control plane's Faust leader
#   topic (faust/assignor/leader_assignor.py), and Kafka takes topic names of at most 249 characters.
_PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
_LONGEST_TOPIC = "driftloop-{}-control-__assignor-__leader"
MAX_NAME_LENGTH = 249 - len(_LONGEST_TOPIC.format(""))
# - The entity and the model inputs are the feature view's columns. The offline store's time column is
#   `event_timestamp`, which is also the time column of Feast's entity_df; Feast names its own columns and
#   entities with a leading "__" (an input `__dummy_id` or an entity `__dummy` broke the online read;
#   `__tmp` and `__event_timestamp` are its join's).
TIMESTAMP_COLUMN = "event_timestamp"
# - Every retraining also trains an ONNX candidate (skl2onnx), whose outputs are `label` and
#   `probabilities`: skl2onnx renames an input of either name, and the model no longer takes its rows.
_ONNX_OUTPUTS = ("label", "probabilities")
# - `model.name` is the MLflow registered model (mlflow/utils/validation.py: not blank, no '/' or ':', its
#   own normalised path; the registry's database column holds 256 characters), and driftloop quotes it
#   in MLflow search filters, which cannot escape a "'".
MAX_MODEL_NAME_LENGTH = 256
# - Category values: the encoders name unseen and missing categories with these, and sklearn's one-hot
#   encoder rejects repeated categories.
UNSEEN = "__unseen__"
MISSING = "__missing__"  # what a None category becomes before it reaches an encoder


def parse_duration(text: Any) -> float:
    """'500ms', '30s', '10m', '1h', '7d' -> seconds."""
    match = _DURATION.match(str(text).strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a positive duration like 30s, 10m, 1h or 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def duration_text(seconds: float) -> str:
    """Seconds in the largest unit they reach: 86400 -> '1d', 5400 -> '1.5h'."""
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNIT_SECONDS[unit]:
            value = seconds / _UNIT_SECONDS[unit]
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.3g}{unit}"
    return f"{seconds:.3g}s"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Span(_Strict):
    """An amount of stream, written `2000 events` (a count of events) or `3d` (a duration of event time: the
    newest event time seen, never the wall clock, so a replay at any rate keeps the same policy)."""

    events: int | None = Field(default=None, ge=1)
    seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return value if isinstance(value, dict | Span) else parse_span(value)

    @model_validator(mode="after")
    def _one(self) -> Span:
        if (self.events is None) == (self.seconds is None):
            raise ValueError("give either a count of events like `2000 events` or a duration like 3d, not both")
        return self

    def reached(self, events: int, seconds: float) -> bool:
        """Whether `events` events, spanning `seconds` of event time, make up this span."""
        if self.events is not None:
            return events >= self.events
        assert self.seconds is not None  # _one: exactly one of the two is set
        return seconds >= self.seconds

    def left(self, events: int, seconds: float) -> str:
        """What remains of the span after `events` events spanning `seconds` of event time, for a sentence."""
        if self.events is not None:
            left = max(0, self.events - events)
            return f"{left:,} event{'' if left == 1 else 's'}"
        assert self.seconds is not None  # _one: exactly one of the two is set
        return f"{duration_text(max(0.0, self.seconds - seconds))} of event time"

    def __str__(self) -> str:
        if self.events is not None:
            return f"{self.events} events"
        assert self.seconds is not None  # _one: exactly one of the two is set
        return duration_text(self.seconds)


_SPAN_EVENTS = re.compile(r"^(\d+)\s*events?$")


def parse_span(value: Any) -> dict[str, float]:
    """'2000 events' -> {"events": 2000}; '3d' -> {"seconds": 259200}. A bare number is refused: 600 could
    mean events or seconds, and a policy read the wrong way is silently wrong."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a count of events like `2000 events` or a duration like 3d")
    if not isinstance(value, str):
        raise ValueError(
            f"{value!r} has no unit: write `{value} events` for a count of events, or an event-time duration "
            f"like 30m, 6h or 3d"
        )
    text = value.strip()
    match = _SPAN_EVENTS.match(text)
    if match:
        if int(match.group(1)) == 0:
            raise ValueError(f"{value!r}: the count of events must be at least 1")
        return {"events": int(match.group(1))}
    try:
        return {"seconds": parse_duration(text)}
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a count of events like `2000 events` nor an event-time duration like 30m, 6h or 3d"
        ) from None


def _spans(value: Any) -> Any:
    """One span or a list of them (whichever is reached first), as a tuple."""
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def _one_of_each(spans: tuple[Span, ...]) -> tuple[Span, ...]:
    if not spans:
        raise ValueError("give a count of events like `500 events`, a duration like 1d, or one of each")
    if sum(s.events is not None for s in spans) > 1 or sum(s.seconds is not None for s in spans) > 1:
        raise ValueError("give at most one count of events and one duration (whichever is reached first)")
    return spans


def _renamed(data: Any, section: str, old: dict[str, str], new: str, single: bool = False) -> Any:
    """The spelling before spans (`evaluate_every_events: 500`, ...) read as the span key `new`: `old` maps each
    old key to the span's unit ("events" or a duration unit)."""
    if not isinstance(data, dict) or not set(old) & set(data):
        return data
    given = [key for key in old if key in data]
    if new in data:
        raise ValueError(f"{', '.join(given)} is the old spelling of {section}.{new}; give it once, in {new}")
    rest = {key: value for key, value in data.items() if key not in old}
    spans = []
    for key in given:
        if data[key] is None:
            continue
        unit = old[key]
        if unit == "events":
            spans.append(f"{data[key]} events" if isinstance(data[key], int) else data[key])
        elif isinstance(data[key], int | float) and not isinstance(data[key], bool):
            spans.append({"seconds": data[key] * _UNIT_SECONDS[unit]})
        else:
            spans.append(data[key])
    if spans:
        rest[new] = spans[0] if single else spans
    return rest


class FieldSpec(_Strict):
    type: Literal["string", "int", "float", "bool", "category", "timestamp"]
    required: bool = True
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] | None = None  # the known categories; anything else is 'unseen'
    max_length: int = Field(default=256, ge=1)

    @property
    def numeric(self) -> bool:
        return self.type in ("int", "float")


class EventsSpec(_Strict):
    id_field: str
    entity: str
    time_field: str
    fields: dict[str, FieldSpec]

    @field_validator("fields")
    @classmethod
    def _names(cls, fields: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        for name in fields:
            if not _NAME.match(name):
                raise ValueError(f"field name {name!r} must be an identifier (letters, digits, _)")
        return fields


class OutcomesSpec(_Strict):
    id_field: str = "event_id"
    label: str
    time_field: str = "outcome_time"
    join_ttl: float = 7 * 86400  # how long a prediction waits for its outcome (and vice versa)

    _ttl = field_validator("join_ttl", mode="before")(lambda v: parse_duration(v) if isinstance(v, str) else v)


class WindowSpec(_Strict):
    size: float
    kind: Literal["tumbling", "hopping", "sliding"] = "sliding"
    step: float | None = None

    _durations = field_validator("size", "step", mode="before")(
        lambda v: parse_duration(v) if isinstance(v, str) else v
    )


class FeatureSpec(_Strict):
    name: str
    agg: Literal[tuple(AGGREGATIONS)]  # type: ignore[valid-type]  # the registered aggregations: known at import
    field: str | None = None
    window: WindowSpec | None = None


class ModelSpec(_Strict):
    name: str
    flavor: str  # a name in the flavor registry, driftloop/models/flavors.py
    estimator: str  # one of that flavor's estimators
    params: dict[str, Any] = {}
    inputs: tuple[str, ...] | None = None  # default: every feature plus every numeric/category/bool event field
    threshold: float = Field(default=0.5, gt=0, lt=1)
    # labelled events with full feature windows before the first model of a flavor that cannot start cold
    warmup: Span = Span(events=2000)
    # what serves until then: a cold-start "flavor:estimator", or "none" (register the first champion yourself)
    placeholder: str = "river:logistic_regression"

    @model_validator(mode="before")
    @classmethod
    def _old_warmup(cls, data: Any) -> Any:
        return _renamed(data, "model", {"warmup_events": "events"}, "warmup", single=True)

    @property
    def placeholder_model(self) -> tuple[str, str] | None:
        """(flavor, estimator) of the placeholder, or None for `none`."""
        if self.placeholder == "none":
            return None
        flavor, _, estimator = self.placeholder.partition(":")
        return flavor, estimator


def _flavor_checks(spec: PipelineSpec):
    """Yield (path, problem) for a flavor or estimator, of the model or a retraining candidate, that the flavor
    registry does not offer."""
    from driftloop.models.flavors import flavor_of  # imported here: the flavors import this module

    models = [("model", spec.model.flavor, spec.model.estimator)]
    models += [
        (f"retrain.candidates.{flavor}", flavor, estimator)
        for flavor, estimator in (spec.retrain.candidates or {}).items()
    ]
    for where, flavor, estimator in models:
        try:
            offered = flavor_of(flavor).estimators
        except DriftloopError as exc:
            yield "model.flavor" if where == "model" else where, str(exc)
            continue
        if estimator not in offered:
            yield "model.estimator" if where == "model" else where, f"{flavor} estimators are {', '.join(offered)}"
    if spec.retrain.candidates == {}:
        yield "retrain.candidates", "name at least one flavor: estimator to train (or leave it out for the default)"
    yield from _placeholder_checks(spec)


def _placeholder_checks(spec: PipelineSpec):
    """Yield (path, problem) for a `model.placeholder` that could not serve from a cold start."""
    from driftloop.models.flavors import FLAVORS  # imported here: the flavors import this module

    placeholder = spec.model.placeholder
    if placeholder == "none":
        return
    flavor, colon, estimator = placeholder.partition(":")
    cold = ", ".join(f"{name}:{e}" for name, cls in FLAVORS.items() if cls.cold_start for e in cls.estimators)
    if not colon or flavor not in FLAVORS or estimator not in FLAVORS[flavor].estimators:
        yield "model.placeholder", f"{placeholder!r} is not flavor:estimator; write one of {cold}, or none"
    elif not FLAVORS[flavor].cold_start:
        yield "model.placeholder", f"{flavor} models cannot serve untrained; write one of {cold}, or none"


class DataThresholds(_Strict):
    """Per stat test Evidently's DataDriftPreset may pick for a column (streams/control/drift/data.py): drift is a
    distance at or above its threshold, or a p-value below it. Evidently's defaults, except Wasserstein's (0.1)."""

    # heavy-tailed amounts and windowed features reach 0.17 on stationary demo windows; a covariate shift 0.3-0.8
    wasserstein: float = Field(default=0.2, gt=0)
    jensenshannon: float = Field(default=0.1, gt=0, le=1)
    ks: float = Field(default=0.05, gt=0, lt=1)
    chisquare: float = Field(default=0.05, gt=0, lt=1)
    z: float = Field(default=0.05, gt=0, lt=1)


class DriftSpec(_Strict):
    window_events: int = Field(default=1000, ge=50)
    # an evaluation when the first of these is reached since the last one (and at least one row came in)
    evaluate_every: tuple[Span, ...] = (Span(events=500),)
    reference_size: int = Field(default=5000, ge=100)
    drifted_share: float = Field(default=0.15, gt=0, le=1)
    sustained_windows: int = Field(default=3, ge=1)
    data_thresholds: DataThresholds = DataThresholds()
    # {detector: adwin, <its knobs>}: streams/control/drift/detectors/ (its own module per detector)
    concept: SerializeAsAny[ConceptDetector] = Field(default_factory=lambda: concept_detector({}))
    # schema/data-quality drift: a window whose rate exceeds one of these is flagged (and audited)
    max_unseen_rate: float = Field(default=0.05, gt=0, le=1)
    max_missing_rate: float = Field(default=0.2, gt=0, le=1)
    max_dlq_rate: float = Field(default=0.05, gt=0, le=1)
    # a retraining when the first of these is reached since the last finished one (None: no schedule)
    schedule_every: tuple[Span, ...] | None = None
    # after each finished retraining, no other until this much more of the stream has been observed
    cooldown: Span = Span(events=2000)

    _concept = field_validator("concept", mode="before")(concept_detector)
    _span_lists = field_validator("evaluate_every", "schedule_every", mode="before")(
        lambda v: None if v is None else _spans(v)
    )
    _span_counts = field_validator("evaluate_every", "schedule_every")(lambda v: None if v is None else _one_of_each(v))

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, data: Any) -> Any:
        """The spellings before spans still read: `evaluate_every_events`/`_seconds` as `evaluate_every`,
        `schedule_every_events`/`_hours` as `schedule_every` (their seconds and hours are now event time), and
        `concept_detector: X`, from before detectors had knobs, as `concept: {detector: X}`."""
        data = _renamed(
            data, "drift", {"evaluate_every_events": "events", "evaluate_every_seconds": "s"}, "evaluate_every"
        )
        data = _renamed(
            data, "drift", {"schedule_every_events": "events", "schedule_every_hours": "h"}, "schedule_every"
        )
        if not isinstance(data, dict) or "concept_detector" not in data:
            return data
        if "concept" in data:
            raise ValueError(
                "concept_detector is the old spelling of concept.detector; give the detector once, in concept"
            )
        rest = {key: value for key, value in data.items() if key != "concept_detector"}
        return {**rest, "concept": {"detector": data["concept_detector"]}}


class RetrainSpec(_Strict):
    # At most this many labelled events, newest first. The retrain worker holds the window in memory:
    # building a 200,000-row training set from elec2 replayed five times peaked at 712 MB
    # (load/benchmarks/retrain_memory.py).
    window_events: int = Field(default=20000, ge=100, le=200_000)
    min_rows: int = Field(default=1000, ge=50)  # wait for this many labelled events after the drift point
    holdout_share: float = Field(default=0.25, gt=0, lt=1)  # the newest share, for validation
    gate_metric: Literal["accuracy", "roc_auc", "log_loss"] = "roc_auc"
    min_improvement: float = Field(default=0.0, ge=0)  # over the champion on the same holdout
    # flavor -> estimator of each candidate trained; default: every flavor's `retrain_estimator`
    candidates: dict[str, str] | None = None


class CanarySpec(_Strict):
    share: float = Field(default=0.1, gt=0, lt=1)
    shadow: bool = False
    min_samples: int = Field(default=300, ge=10)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    max_error_rate: float = Field(default=0.5, gt=0, le=1)
    max_latency_ms: float = Field(default=250, gt=0)
    max_samples: int = Field(default=5000, ge=10)  # per variant: no significant difference by then -> roll back
    # how the canary share is drawn: by a hash of the event id (every stream splits, even with one entity)
    # or of the entity (an entity always sees the same model, but few entities split unevenly or not at all)
    assign: Literal["event", "entity"] = "event"
    # the longest trial, in events observed or event time since it started: undecided by then -> roll back
    max_length: Span | None = None


class BreakerSpec(_Strict):
    """When a model version's scoring calls count as failing (streams/worker/breaker.py)."""

    max_error_rate: float = Field(default=0.5, gt=0, le=1)  # share of a call's rows the model could not score
    max_call_ms: float | None = Field(default=None, gt=0)  # one scoring call; default: half of slo.p99_ms
    failures: int = Field(default=3, ge=1)  # consecutive failing calls that open the breaker
    open_for: float = 10.0  # seconds served by the fallback before a probe
    probe_events: int = Field(default=20, ge=1)  # events of the next batch the model scores on probation

    _open_for = field_validator("open_for", mode="before")(lambda v: parse_duration(v) if isinstance(v, str) else v)


class SloSpec(_Strict):
    """The latency objective the worker steers its batch size and fetch wait by (streams/worker/slo.py)."""

    p99_ms: float = Field(default=50, gt=0)  # 99% of events predicted within this of their append to `events`
    window: float = 300.0  # the rolling window the objective's burn is measured over
    min_batch: int = Field(default=50, ge=1)
    max_batch: int = Field(default=2000, ge=1)
    max_fetch_wait_ms: float = Field(default=25, ge=0)
    # served instead of a version whose breaker is open: the registry's `previous` version, a cold-start
    # "<flavor>:<estimator>" that learns online from the joined outcomes, or "none" (no breaker)
    fallback: str = "previous"
    breaker: BreakerSpec = BreakerSpec()

    _window = field_validator("window", mode="before")(lambda v: parse_duration(v) if isinstance(v, str) else v)

    @property
    def max_call_ms(self) -> float:
        return self.breaker.max_call_ms if self.breaker.max_call_ms is not None else self.p99_ms / 2

    @property
    def fallback_model(self) -> tuple[str, str] | None:
        """(flavor, estimator) of a spec-named fallback model, else None."""
        if ":" not in self.fallback:
            return None
        flavor, estimator = self.fallback.split(":", 1)
        return flavor, estimator


class ReplaySpec(_Strict):
    """What `driftloop replay` makes up for the columns a table lacks; its flags override these."""

    entity_value: str = "all"  # the entity of every event, without an entity column
    time_step: float | None = None  # between rows, without a time column; unset: replay asks for --time-step

    _step = field_validator("time_step", mode="before")(lambda v: parse_duration(v) if isinstance(v, str) else v)


class PipelineSpec(_Strict):
    name: str = Field(max_length=MAX_NAME_LENGTH)
    events: EventsSpec
    outcomes: OutcomesSpec
    features: tuple[FeatureSpec, ...] = ()
    feature_ttl: float = 86400  # Feast feature-view TTL
    model: ModelSpec
    drift: DriftSpec = DriftSpec()
    retrain: RetrainSpec = RetrainSpec()
    canary: CanarySpec = CanarySpec()
    replay: ReplaySpec = ReplaySpec()
    slo: SloSpec = SloSpec()

    _ttl = field_validator("feature_ttl", mode="before")(lambda v: parse_duration(v) if isinstance(v, str) else v)

    @property
    def model_inputs(self) -> tuple[str, ...]:
        if self.model.inputs is not None:
            return self.model.inputs
        passthrough = tuple(
            name
            for name, f in self.events.fields.items()
            if f.type in ("int", "float", "bool", "category") and name != self.events.entity
        )
        return tuple(f.name for f in self.features) + passthrough


def load_spec(path: str | Path) -> PipelineSpec:
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DriftloopError(f"{path}: cannot read spec: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DriftloopError(f"{path}: line {mark.line + 1 if mark else '?'}: not valid YAML") from None
    return parse_spec(document, str(path))


def parse_spec(document: Any, origin: str = "<spec>") -> PipelineSpec:
    if not isinstance(document, dict):
        raise DriftloopError(f"{origin}: the spec must be a YAML mapping")
    try:
        spec = PipelineSpec.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        where, problem = _dotted(error["loc"]), _message(dict(error))
        raise DriftloopError(f"{origin}: {where}: {problem}", how_to_fix(where, problem, error.get("input"))) from None
    for where, problem in _cross_checks(spec):
        raise DriftloopError(f"{origin}: {where}: {problem}", how_to_fix(where, problem, None))
    return spec


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return error["msg"].removeprefix("Value error, ")


def _path_not_unique(name: str) -> bool:
    """MLflow's test of a model name (mlflow.utils.validation.path_not_unique)."""
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith(("..", "/"))


def _name_checks(spec: PipelineSpec):
    """Yield (path, problem) for names that Feast, MLflow, Kafka or the model exporters would refuse later."""
    if not _PIPELINE_NAME.match(spec.name):
        suggestion = re.sub(r"[^A-Za-z0-9_]", "_", spec.name).lstrip("_") or "my_pipeline"
        yield (
            "name",
            (
                f"{spec.name!r} must be letters, digits and '_', not starting with '_': it names the Feast "
                f"project (whose SQLite tables take no '-'), Kafka topics and consumer groups; "
                f"try {suggestion!r}"
            ),
        )
    model_name = spec.model.name
    if not model_name.strip():
        yield "model.name", "the MLflow registered model needs a name"
    elif any(c in model_name for c in "/:'"):
        suggestion = re.sub(r"[/:']", "_", model_name)
        yield (
            "model.name",
            (
                f"{model_name!r}: MLflow model names take no '/' or ':', and driftloop's registry "
                f'searches cannot hold a "\'"; try {suggestion!r}'
            ),
        )
    elif _path_not_unique(model_name):
        yield (
            "model.name",
            (
                f"{model_name!r} would be the file path {posixpath.normpath(model_name)!r}; MLflow "
                f"requires a model name that is its own normalised path, not '.', not starting "
                f"with '..'"
            ),
        )
    elif len(model_name) > MAX_MODEL_NAME_LENGTH:
        yield "model.name", f"{len(model_name)} characters; MLflow's registry holds at most {MAX_MODEL_NAME_LENGTH}"
    ev = spec.events
    columns = [("events.entity", ev.entity)]
    windowed = {f.name: i for i, f in enumerate(spec.features)}
    for i, name in enumerate(spec.model_inputs):
        if spec.model.inputs is not None:
            columns.append((f"model.inputs[{i}]", name))
        elif name in windowed:
            columns.append((f"features[{windowed[name]}].name", name))
        else:
            columns.append((f"events.fields.{name}", name))
    for where, name in columns:
        if name == TIMESTAMP_COLUMN:
            yield (
                where,
                (
                    f"{name!r} is the time column of the Feast offline store (and of Feast's entity_df); "
                    f"rename it, e.g. {name + '_value'!r}"
                ),
            )
        elif name.startswith("__"):
            yield where, f"{name!r}: names starting with '__' are Feast's own (__dummy, __dummy_id, ...); drop the '__'"
        elif name in _ONNX_OUTPUTS and where != "events.entity":
            yield (
                where,
                (
                    f"{name!r} is an output of the exported ONNX model (skl2onnx: label, probabilities), so "
                    f"it cannot be an input; rename it, e.g. {name + '_value'!r}"
                ),
            )
    if ev.entity in (spec.model.inputs or ()):
        yield (
            f"model.inputs[{(spec.model.inputs or ()).index(ev.entity)}]",
            (f"{ev.entity!r} is the entity (the Feast join key), which a model does not take as an input"),
        )
    for i, name in enumerate(spec.model.inputs or ()):
        if (spec.model.inputs or ()).index(name) != i:
            yield f"model.inputs[{i}]", f"{name!r} is listed twice"
    for name, f in ev.fields.items():
        for value in set(f.values or ()) & {UNSEEN, MISSING}:
            yield f"events.fields.{name}.values", f"{value!r} is reserved for unseen and missing categories"
        if f.values is not None and len(set(f.values)) < len(f.values):
            repeated = sorted({v for v in f.values if f.values.count(v) > 1})
            yield f"events.fields.{name}.values", f"{', '.join(map(repr, repeated))} listed more than once"


def _cross_checks(spec: PipelineSpec):
    """Yield (path, problem) for rules that span several parts of the spec."""
    yield from _name_checks(spec)
    ev = spec.events
    for key, expected in (
        ("id_field", ("string", "int")),
        ("entity", ("string", "int")),
        ("time_field", ("timestamp",)),
    ):
        name = getattr(ev, key)
        if name not in ev.fields:
            yield f"events.{key}", f"{name!r} is not one of events.fields"
        elif ev.fields[name].type not in expected:
            yield f"events.{key}", f"field {name!r} must have type {' or '.join(expected)}"
        elif not ev.fields[name].required:
            yield f"events.fields.{name}.required", f"{key} field must be required"
    for name, f in ev.fields.items():
        where = f"events.fields.{name}"
        if (f.min is not None or f.max is not None) and not f.numeric:
            yield where, "min/max apply only to int and float fields"
        if f.min is not None and f.max is not None and f.min > f.max:
            yield where, "min is larger than max"
        if f.type == "category" and not f.values:
            yield f"{where}.values", "a category field needs its known values"
        if f.type != "category" and f.values is not None:
            yield f"{where}.values", "values apply only to category fields"
    seen: set[str] = set()
    for i, feat in enumerate(spec.features):
        where = f"features[{i}]"
        if not _NAME.match(feat.name):
            yield f"{where}.name", f"{feat.name!r} must be an identifier"
        if feat.name in seen or feat.name in ev.fields:
            yield f"{where}.name", f"{feat.name!r} is already used by another feature or event field"
        seen.add(feat.name)
        aggregation = AGGREGATIONS[feat.agg]
        if aggregation.needs_field and feat.field is None:
            yield f"{where}.field", f"agg {feat.agg!r} needs a numeric event field"
        if feat.field is not None and (feat.field not in ev.fields or not ev.fields[feat.field].numeric):
            yield f"{where}.field", f"{feat.field!r} is not a numeric field of events.fields"
        if not aggregation.windowed:
            if feat.window is not None:
                yield f"{where}.window", f"{feat.agg} takes no window"
        elif feat.window is None:
            yield f"{where}.window", f"agg {feat.agg!r} needs a window"
        elif feat.window.kind == "hopping" and (feat.window.step is None or feat.window.step >= feat.window.size):
            yield f"{where}.window.step", "a hopping window needs a step smaller than its size"
        elif feat.window.kind != "hopping" and feat.window.step is not None:
            yield f"{where}.window.step", f"a {feat.window.kind} window takes no step"
        elif feat.window.size > spec.feature_ttl:
            yield f"{where}.window.size", "window is longer than feature_ttl; Feast would expire it first"
    yield from _flavor_checks(spec)
    known = {f.name for f in spec.features} | set(ev.fields)
    for i, name in enumerate(spec.model.inputs or ()):
        if name not in known:
            yield f"model.inputs[{i}]", f"{name!r} is neither a feature nor an event field"
        elif name in ev.fields and ev.fields[name].type in ("string", "timestamp"):
            yield (
                f"model.inputs[{i}]",
                f"{name!r} is a {ev.fields[name].type} field; models take numbers and categories",
            )
    if not spec.model_inputs:
        yield "model.inputs", "the model has no inputs"
    if spec.outcomes.label in ev.fields:
        yield "outcomes.label", "the label must not be an event field (it arrives later on the outcomes topic)"
    if spec.canary.max_samples < spec.canary.min_samples:
        yield "canary.max_samples", "must be at least canary.min_samples"
    canary = spec.canary
    arm_share = 1.0 if canary.shadow else canary.share  # in shadow mode the challenger scores every event
    if canary.max_length is not None and canary.max_length.events is not None:
        needed = math.ceil(canary.min_samples / arm_share)
        if canary.max_length.events < needed:
            yield (
                "canary.max_length",
                f"{canary.max_length} hold about {canary.max_length.events * arm_share:.0f} challenger events at "
                f"canary.share {canary.share:g}, fewer than canary.min_samples {canary.min_samples}: a trial could "
                f"never decide; make it at least {needed} events",
            )
    if spec.retrain.min_rows > spec.retrain.window_events:
        yield "retrain.min_rows", "must be at most retrain.window_events"
    if not math.isfinite(spec.canary.max_latency_ms):
        yield "canary.max_latency_ms", "must be finite"
    yield from _slo_checks(spec.slo)


def _slo_checks(slo: SloSpec):
    """Yield (path, problem) for an SLO the worker could not steer by."""
    from driftloop.models.flavors import flavor_of  # imported here: the flavors import this module

    if slo.min_batch > slo.max_batch:
        yield "slo.min_batch", f"{slo.min_batch} is larger than slo.max_batch ({slo.max_batch})"
    if slo.max_call_ms > slo.p99_ms:
        yield (
            "slo.breaker.max_call_ms",
            f"{slo.max_call_ms:g} ms is above the objective slo.p99_ms ({slo.p99_ms:g} ms): a model that slow "
            f"breaks the objective before its breaker opens; give at most {slo.p99_ms:g}",
        )
    if slo.window < 10:
        yield "slo.window", "the burn window must be at least 10s, e.g. 5m"
    model = slo.fallback_model
    if model is None:
        if slo.fallback not in ("previous", "none"):
            yield (
                "slo.fallback",
                f"{slo.fallback!r}: give previous (the version before the champion), none, or a cold-start "
                f"model as flavor:estimator, e.g. river:logistic_regression",
            )
        return
    flavor, estimator = model
    try:
        kind = flavor_of(flavor)
    except DriftloopError as exc:
        yield "slo.fallback", str(exc)
        return
    if estimator not in kind.estimators:
        yield "slo.fallback", f"{flavor} estimators are {', '.join(kind.estimators)}"
    elif not kind.cold_start:
        yield (
            "slo.fallback",
            f"{flavor} models cannot start untrained; name a cold-start flavor (river:logistic_regression) or previous",
        )
