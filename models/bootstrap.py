"""The first model: make sure the registered model has a `champion` before anything scores.

`ensure_champion(spec, tracking_uri, warmup)` returns the champion version when the alias exists; otherwise
it builds one, registers it with the tag `driftloop.origin=bootstrap`, and points `champion` at it:
- with `warmup` rows: the spec's model trained on them (an online flavor learns them in order);
- without: a cold start when the flavor can (`Model.cold_start`, River). A flavor that cannot (ONNX)
  cannot exist yet, so the champion is the spec's `model.placeholder`, a cold-start model over the same
  inputs (default River logistic regression; tag `driftloop.placeholder=warmup`). It serves and learns
  until the control plane has seen `model.warmup` of labelled events with full feature windows and asks for
  a "warmup" retraining, whose model then replaces it directly (no canary: the placeholder is not a model
  anyone chose). With `model.placeholder: none` nothing is registered: the first champion is the user's.
The warmup rows (at most spec.drift.reference_size of them) become the version's reference sample.

Two workers bootstrapping the same empty registry at once can both register a version. A worker that
finds `champion` already set after registering keeps that champion (its own version stays registered,
without alias); only when both check in the same instant does the later `set_alias` win.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from driftloop.child_process import receive, start_child
from driftloop.errors import DriftloopError
from driftloop.models.flavors import flavor_of, new_model, train, with_model
from driftloop.models.provenance import PLACEHOLDER_TAG
from driftloop.models.registry import ModelVersionInfo, get_alias_version, register, set_alias, version_info
from driftloop.signing import SigningKey
from driftloop.spec import PipelineSpec

CHAMPION = "champion"
ORIGIN_TAG = "driftloop.origin"
__all__ = ["CHAMPION", "ORIGIN_TAG", "PLACEHOLDER_TAG", "ensure_champion", "ensure_champion_apart", "placeholder_spec"]
BOOTSTRAP_TIMEOUT_S = 300.0


def placeholder_spec(spec: PipelineSpec) -> PipelineSpec:
    """The spec of the cold-start model (`model.placeholder`) that serves a pipeline whose flavor cannot start
    cold until its first training."""
    placeholder = spec.model.placeholder_model
    if placeholder is None:
        raise DriftloopError(
            f"model {spec.model.name}: the registry has no champion, {spec.model.flavor} models cannot start "
            f"untrained and model.placeholder is none: register a first version and point the alias 'champion' "
            f"at it, or set model.placeholder (e.g. river:logistic_regression)"
        )
    return with_model(spec, *placeholder)


def ensure_champion(
    spec: PipelineSpec,
    tracking_uri: str,
    warmup: Iterable[tuple[Mapping[str, Any], int]] | None = None,
    key: SigningKey | None = None,
) -> ModelVersionInfo:
    name = spec.model.name
    current = get_alias_version(name, CHAMPION, tracking_uri=tracking_uri)
    if current is not None:
        return version_info(name, current, tracking_uri=tracking_uri)

    pairs = list(warmup) if warmup is not None else []
    rows = [row for row, _ in pairs]
    labels = [int(label) for _, label in pairs]
    tags = {ORIGIN_TAG: "bootstrap"}
    built_by = spec
    if rows:
        model = train(spec, rows, labels)
    elif flavor_of(spec.model.flavor).cold_start:
        model = new_model(spec)
    else:
        built_by = placeholder_spec(spec)
        model = new_model(built_by)
        tags[PLACEHOLDER_TAG] = "warmup"

    metrics = {"warmup_rows": float(len(rows)), "warmup_positive_rate": sum(labels) / len(labels) if labels else 0.0}
    info = register(
        model,
        built_by,
        tracking_uri=tracking_uri,
        reference_rows=rows[-spec.drift.reference_size :],
        metrics=metrics,
        params={"origin": "bootstrap", "cold_start": not rows},
        tags=tags,
        run_name=f"{name}-bootstrap",
        key=key,
    )
    if get_alias_version(name, CHAMPION, tracking_uri=tracking_uri) is None:
        set_alias(name, CHAMPION, info.version, tracking_uri=tracking_uri)
        return info
    # another worker bootstrapped meanwhile: keep its champion (ours stays registered, unaliased)
    theirs = get_alias_version(name, CHAMPION, tracking_uri=tracking_uri) or info.version
    return version_info(name, theirs, tracking_uri=tracking_uri)


def ensure_champion_apart(spec: PipelineSpec, tracking_uri: str, key: SigningKey | None = None) -> ModelVersionInfo:
    """`ensure_champion` without warm-up rows, for a scoring worker: finding the champion reads the registry
    over its REST API, and registering a first one (which imports MLflow's client, ~50 MB the worker would
    keep for the rest of its life) runs in a child process. Its failure is raised as a DriftloopError."""
    name = spec.model.name
    current = get_alias_version(name, CHAMPION, tracking_uri=tracking_uri)
    if current is not None:
        return version_info(name, current, tracking_uri=tracking_uri)
    child, receiver = start_child(_bootstrap_child, (spec, tracking_uri, key), "driftloop-bootstrap", duplex=False)
    try:
        outcome, detail = receive(receiver, child, f"model {name}: the bootstrap process", BOOTSTRAP_TIMEOUT_S)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    if outcome != "ok":
        raise DriftloopError(f"model {name}: registering the first champion failed: {detail}")
    return detail


def _bootstrap_child(spec: PipelineSpec, tracking_uri: str, key: SigningKey | None, sender) -> None:
    try:
        sender.send(("ok", ensure_champion(spec, tracking_uri, key=key)))
    except Exception as exc:  # every failure reaches the worker, as text: exceptions may not unpickle
        sender.send(("error", f"{type(exc).__name__}: {exc}"))
