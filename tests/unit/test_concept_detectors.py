"""The contract every registered concept-drift detector meets, and its knobs as spec keys.

Like River's `checks/`: one suite, run on each entry of DETECTORS, so a detector added by following
docs/extending-detectors.md is tested by its registry line alone. The loss streams are synthetic, at
the detector's default loss: 0/1 errors, or exponential log losses capped like the monitor's.
"""

from __future__ import annotations

import copy
import math
import random

import pytest
import yaml

from driftloop.errors import DriftloopError
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec, parse_spec
from driftloop.streams.control.drift.concept import ConceptDriftMonitor
from driftloop.streams.control.drift.detectors import DETECTORS, concept_detector, detector_class
from driftloop.streams.control.drift.detectors.base import ConceptDetector
from tests.support import REPO

SEEDS = range(1, 6)
HISTORY = 20_000


def _losses(detector: ConceptDetector, rng: random.Random, mean: float, count: int) -> list[float]:
    if detector.loss == "error":
        return [float(rng.random() < mean) for _ in range(count)]
    return [min(detector.loss_cap, rng.expovariate(1 / mean)) for _ in range(count)]


def _changes(detector: ConceptDetector, losses: list[float]) -> list[tuple[int, object]]:
    """(event index, Change) for each detection; event times are the indices, as text."""
    started = detector.started(HISTORY)
    return [(event, change) for event, loss in enumerate(losses) if (change := started.update(loss, str(event)))]


@pytest.fixture(scope="module")
def demo() -> dict:
    return yaml.safe_load(DEMO_SPEC.read_text())


def _spec_with(demo: dict, **drift):
    document = copy.deepcopy(demo)
    document["drift"] = {key: value for key, value in document["drift"].items() if key != "concept"} | drift
    return parse_spec(document, "my_spec.yaml")


def _spec_error(demo: dict, **drift) -> str:
    with pytest.raises(DriftloopError) as error:
        _spec_with(demo, **drift)
    return str(error.value)


# -- the contract --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", DETECTORS)
def test_a_tripled_loss_is_found_within_2000_events_with_its_onset(name, seed):
    detector = concept_detector({"detector": name})
    rng = random.Random(seed)
    onset = 5_000
    found = _changes(detector, _losses(detector, rng, 0.1, onset) + _losses(detector, rng, 0.3, 2_000))
    assert found, f"{name} missed a rise of the mean loss from 0.1 to 0.3"
    event, change = found[0]
    assert onset <= event < onset + 2_000, f"{name} fired at event {event}, the loss rose at {onset}"
    assert abs(int(change.change_point) - onset) <= 300
    assert int(change.window_start) <= int(change.change_point)
    assert change.loss_before == pytest.approx(0.1, abs=0.03) and change.loss_after > 2 * change.loss_before


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", DETECTORS)
def test_a_calm_loss_raises_nothing(name, seed):
    detector = concept_detector({"detector": name})
    assert _changes(detector, _losses(detector, random.Random(seed), 0.1, 20_000)) == []


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", DETECTORS)
def test_a_falling_loss_is_not_concept_drift(name, seed):
    """A model learning online lowers its loss: that must never trigger a retraining."""
    detector = concept_detector({"detector": name})
    rng = random.Random(seed)
    assert _changes(detector, _losses(detector, rng, 0.3, 3_000) + _losses(detector, rng, 0.1, 5_000)) == []


@pytest.mark.parametrize("name", DETECTORS)
def test_each_model_version_gets_its_own_detector_and_the_spec_is_never_fed(name, demo):
    spec = _spec_with(demo, concept={"detector": name})
    monitor = ConceptDriftMonitor(spec)
    rng = random.Random(1)
    losses = _losses(spec.drift.concept, rng, 0.1, 3_000) + _losses(spec.drift.concept, rng, 0.4, 2_000)
    found = None
    for event, loss in enumerate(losses):
        # an outcome whose loss is `loss`: the monitor computes it from the served score or decision
        record = {
            "model_version": 2,
            "label": 1,
            "event_time": str(event),
            "decision": int(loss == 0.0),
            "score": math.exp(-loss),
        }
        found = found or monitor.update(record)
    assert found is not None and found["version"] == 2 and found["detector"] == name
    assert found["loss"] == spec.drift.concept.loss
    quiet = {"model_version": 3, "label": 1, "event_time": "0", "decision": 1, "score": 0.99}
    assert monitor.update(quiet) is None and monitor._versions[3].labeled == 1  # version 3 starts afresh
    assert spec == _spec_with(demo, concept={"detector": name})  # the spec's detector is a template, unfed


# -- knobs are spec keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DETECTORS)
def test_knobs_are_spec_keys_that_round_trip(name, demo):
    spec = _spec_with(demo, concept={"detector": name})
    assert type(spec.drift.concept) is detector_class(name) and spec.drift.concept.detector == name
    dumped = spec.drift.model_dump()["concept"]
    assert set(dumped) <= {"detector", *detector_class(name).knobs()}
    assert _spec_with(demo, concept=dumped) == spec


@pytest.mark.parametrize("name", DETECTORS)
def test_every_numeric_knob_is_bounded_and_the_spec_names_it_when_out_of_bounds(name, demo):
    cls = detector_class(name)
    numeric = [knob for knob in cls.knobs() if cls.model_fields[knob].annotation in (int, float)]
    assert numeric, f"{name} has no numeric knob"
    for knob in numeric:
        lower = [
            bound
            for m in cls.model_fields[knob].metadata
            if (bound := getattr(m, "gt", getattr(m, "ge", None))) is not None
        ]
        assert lower, f"{name}.{knob} takes any number: declare its bounds with Field(gt=/ge=...)"
        error = _spec_error(demo, concept={"detector": name, knob: lower[0] - 1})
        assert error.startswith(f"my_spec.yaml: drift.concept.{knob}: Input should be greater than"), error


def test_defaults_are_the_detectors_calibrated_before_they_were_spec_keys(demo):
    default = _spec_with(demo).drift.concept
    assert (default.detector, default.loss, default.loss_cap, default.delta) == ("adwin", "log_loss", 2.0, 0.002)
    page_hinkley = _spec_with(demo, concept={"detector": "page_hinkley"}).drift.concept
    assert (page_hinkley.loss, page_hinkley.delta, page_hinkley.threshold) == ("error", 0.02, 100.0)
    assert load_spec(DEMO_SPEC).drift.concept == default  # the shipped spec spells the defaults out


def test_the_old_spelling_still_reads(demo):
    old = _spec_with(demo, concept_detector="page_hinkley")
    assert old.drift.concept == _spec_with(demo, concept={"detector": "page_hinkley"}).drift.concept
    assert _spec_error(demo, concept_detector="adwin", concept={"detector": "adwin"}) == (
        "my_spec.yaml: drift: concept_detector is the old spelling of concept.detector; give the detector once, "
        "in concept"
    )


@pytest.mark.parametrize(
    "concept, expected",
    [
        (
            {"detector": "no_such"},
            (
                "drift.concept.detector: 'no_such' is not a concept-drift detector; the detectors "
                f"are {', '.join(sorted(DETECTORS))}"
            ),
        ),
        (
            {"detector": "adwin", "threshold": 100},
            (
                "drift.concept.threshold: not a knob of adwin; its knobs are loss, "
                "loss_cap, delta, clock, min_window_length, grace_period"
            ),
        ),
        ({"detector": "adwin", "loss": "hinge"}, "drift.concept.loss: Input should be 'log_loss' or 'error'"),
        ({"detector": "adwin", "delta": 1.5}, "drift.concept.delta: Input should be less than 1"),
        (
            {"detector": "page_hinkley", "loss_cap": 3},
            ("drift.concept: loss_cap caps the log loss; the 0/1 error (loss: error) takes none"),
        ),
        ("adwin", "drift.concept: must be a mapping: the detector and its knobs, e.g. detector: adwin"),
    ],
)
def test_bad_concept_knobs_name_their_path_and_reason(demo, concept, expected):
    assert _spec_error(demo, concept=concept) == f"my_spec.yaml: {expected}"


def test_the_worked_example_in_the_docs_is_the_shipped_detector():
    """docs/extending-detectors.md shows the change that added ddm: its module verbatim and its registry line."""
    root = REPO
    doc = (root / "docs" / "extending-detectors.md").read_text()
    package = root / "streams" / "control" / "drift" / "detectors"
    assert (package / "ddm.py").read_text() in doc
    assert '+    "ddm": "ddm:DDM",\n' in doc and '\n    "ddm": "ddm:DDM",\n' in (package / "__init__.py").read_text()
