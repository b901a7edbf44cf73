"""docs/spec.md lists every key of the pipeline spec, and only keys the spec has."""

from __future__ import annotations

import re
import typing

from pydantic import BaseModel

from driftloop.spec import PipelineSpec, Span
from driftloop.streams.control.drift.detectors import DETECTORS, detector_class
from tests.support import REPO

# Read by a validator before the model sees it (the old spelling of drift.concept.detector).
SPELLINGS = {"drift.concept_detector"}


def spec_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key path of `model`: leaves and the sections that hold them (`features[]`, `events.fields.<name>`)."""
    keys = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.add(path)
        annotation = info.annotation
        if path == "drift.concept":
            for detector in DETECTORS:
                keys |= spec_keys(detector_class(detector), f"{path}.")
            continue
        args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
        origin = typing.get_origin(annotation)
        if origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            keys.add(f"{path}.<name>")
            keys |= spec_keys(args[1], f"{path}.<name>.")
        elif origin is tuple and isinstance(args[0], type) and issubclass(args[0], BaseModel) and args[0] is not Span:
            keys.add(f"{path}[]")
            keys |= spec_keys(args[0], f"{path}[].")
        else:
            # a span (`2000 events`, `3d`) is written as one value, so it is a leaf
            nested = [
                a for a in (args or [annotation]) if isinstance(a, type) and issubclass(a, BaseModel) and a is not Span
            ]
            for section in nested:
                keys |= spec_keys(section, f"{path}.")
    return keys


def documented_keys() -> set[str]:
    """The keys in the first column of docs/spec.md's tables; `.max` after `a.min` means `a.max`."""
    keys = set()
    for line in (REPO / "docs" / "spec.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        previous = ""
        for key in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if key.startswith("."):
                key = previous.rsplit(".", 1)[0] + key
            keys.add(key)
            previous = key
    return keys


def test_every_spec_key_is_documented_and_every_documented_key_exists():
    keys, documented = spec_keys(PipelineSpec), documented_keys()
    sections = {key[: m.start()] for key in keys for m in re.finditer(r"\.|\[\]", key)}
    leaves = keys - sections
    assert leaves - documented == set(), "spec keys missing from docs/spec.md"
    assert documented - keys - SPELLINGS == set(), "docs/spec.md lists keys the spec does not have"
