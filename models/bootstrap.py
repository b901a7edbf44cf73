"""The first model: make sure the registered model has a `champion` before anything scores.

`ensure_champion(spec, tracking_uri, warmup)` returns the champion version when the alias exists; otherwise
it builds one (River: learn from `warmup`, or start cold when there is none; ONNX: train on `warmup`, which
is then required), registers it with the tag `driftloop.origin=bootstrap`, and points `champion` at it.
The warmup rows (at most spec.drift.reference_size of them) become the version's reference sample.

Two workers bootstrapping the same empty registry at once can both register a version. A worker that
finds `champion` already set after registering keeps that champion (its own version stays registered,
without alias); only when both check in the same instant does the later `set_alias` win.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from driftloop.errors import DriftloopError
from driftloop.models.flavors import new_model, train_onnx
from driftloop.models.registry import ModelVersionInfo, get_alias_version, register, set_alias, version_info
from driftloop.spec import PipelineSpec

CHAMPION = "champion"
ORIGIN_TAG = "driftloop.origin"


def ensure_champion(spec: PipelineSpec, tracking_uri: str,
                    warmup: Iterable[tuple[Mapping[str, Any], int]] | None = None) -> ModelVersionInfo:
    name = spec.model.name
    current = get_alias_version(name, CHAMPION, tracking_uri=tracking_uri)
    if current is not None:
        return version_info(name, current, tracking_uri=tracking_uri)

    pairs = list(warmup) if warmup is not None else []
    rows = [row for row, _ in pairs]
    labels = [int(label) for _, label in pairs]
    if spec.model.flavor == "river":
        model = new_model(spec)
        if rows:
            model.learn(rows, labels)
    else:
        if not rows:
            raise DriftloopError(f"model {name}: no champion in the registry and no warmup events to train the first "
                                 f"onnx model on (an onnx model cannot start cold; collect "
                                 f"model.warmup_events={spec.model.warmup_events} labelled events first)")
        model = train_onnx(spec, rows, labels)

    metrics = {"warmup_rows": float(len(rows)), "warmup_positive_rate": sum(labels) / len(labels) if labels else 0.0}
    info = register(model, spec, tracking_uri=tracking_uri, reference_rows=rows[-spec.drift.reference_size:],
                    metrics=metrics, params={"origin": "bootstrap", "cold_start": not rows},
                    tags={ORIGIN_TAG: "bootstrap"}, run_name=f"{name}-bootstrap")
    if get_alias_version(name, CHAMPION, tracking_uri=tracking_uri) is None:
        set_alias(name, CHAMPION, info.version, tracking_uri=tracking_uri)
        return info
    # another worker bootstrapped meanwhile: keep its champion (ours stays registered, unaliased)
    return version_info(name, get_alias_version(name, CHAMPION, tracking_uri=tracking_uri), tracking_uri=tracking_uri)
