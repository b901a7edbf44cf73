"""The concept-drift detectors a spec can name in `drift.concept.detector` (protocol: base.py).

Adding one is a new module in this package plus one line in DETECTORS (docs/extending-detectors.md);
tests/unit/test_concept_detectors.py then holds it to the contract every detector meets.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from driftloop.streams.control.drift.detectors.base import ConceptDetector

DEFAULT_DETECTOR = "adwin"

# spec name -> "module:class" in this package; a module is imported only when a spec names its detector
DETECTORS: dict[str, str] = {
    "adwin": "adwin:ADWIN",
    "page_hinkley": "page_hinkley:PageHinkley",
    "ddm": "ddm:DDM",
}


def detector_class(name: str) -> type[ConceptDetector]:
    module, cls = DETECTORS[name].split(":")
    return getattr(import_module(f"{__name__}.{module}"), cls)


def concept_detector(knobs: Any) -> ConceptDetector:
    """The spec's `drift.concept` mapping as the detector it names, its knobs validated by that detector.

    Errors are pydantic ValidationErrors located inside the mapping (`detector`, `delta`, ...), so the
    spec reports them as `drift.concept.<knob>: <reason>`.
    """
    if isinstance(knobs, ConceptDetector):
        return knobs
    if not isinstance(knobs, dict):
        raise _error((), "must be a mapping: the detector and its knobs, e.g. detector: adwin", knobs)
    name = knobs.get("detector", DEFAULT_DETECTOR)
    if name not in DETECTORS:
        raise _error(
            ("detector",),
            f"{name!r} is not a concept-drift detector; the detectors are {', '.join(sorted(DETECTORS))}",
            name,
        )
    cls = detector_class(name)
    for key in knobs:
        if key != "detector" and key not in cls.knobs():
            raise _error((key,), f"not a knob of {name}; its knobs are {', '.join(cls.knobs())}", knobs[key])
    return cls.model_validate({**knobs, "detector": name})


def _error(loc: tuple[str, ...], reason: str, value: Any) -> ValidationError:
    return ValidationError.from_exception_data(
        "drift.concept", [InitErrorDetails(type=PydanticCustomError("concept_detector", reason), loc=loc, input=value)]
    )
