"""Workers follow the registry aliases without a restart, and never swap in a model they cannot verify."""

from __future__ import annotations

import time

import pytest

from driftloop.models import registry
from driftloop.models.bootstrap import ensure_champion
from driftloop.models.flavors import new_model
from driftloop.models.routing import CHALLENGER, ModelRouter
from tests.support.models import DEMO, TRAIN, TRAIN_Y


def _register_challenger(spec, tracking_uri: str) -> int:
    model = new_model(spec)
    model.learn(TRAIN[:300], TRAIN_Y[:300])
    info = registry.register(model, spec, tracking_uri=tracking_uri, reference_rows=TRAIN[:100])
    registry.set_alias(spec.model.name, CHALLENGER, info.version, tracking_uri=tracking_uri)
    return info.version


def _wait_for(condition, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_challenger_serves_its_share_as_canary_within_5s_and_leaves_when_dropped(tracking):
    champion = ensure_champion(DEMO, tracking).version
    router = ModelRouter(DEMO, tracking, poll_seconds=1.0)
    router.start()
    try:
        assert set(router.variants) == {"champion"}
        challenger = _register_challenger(DEMO, tracking)
        assert _wait_for(lambda: "canary" in router.variants, timeout=5) < 5
        assert router.serving("canary").version == challenger and router.serving("champion").version == champion
        # canary.assign event (the default): one entity's events split at the share
        share = sum(router.variant_for("nsw", f"e-{i}") == "canary" for i in range(20_000)) / 20_000
        assert share == pytest.approx(DEMO.canary.share, abs=0.01)
        assert all(router.variant_for("nsw", "e-7") == router.variant_for("user-9", "e-7") for _ in range(10))

        routed = next(f"e-{i}" for i in range(1000) if router.variant_for("nsw", f"e-{i}") == "canary")
        registry.delete_alias(DEMO.model.name, CHALLENGER, tracking_uri=tracking)
        _wait_for(lambda: "canary" not in router.variants, timeout=5)
        # an event routed to the canary just before it left is served, by the champion, not dropped
        assert routed and router.serving("canary").version == champion
        assert router.serving("canary").variant == "champion"
    finally:
        router.stop()


def test_shadow_mode_loads_the_challenger_beside_the_champion_and_serves_none_of_it(tracking):
    spec = DEMO.model_copy(update={"canary": DEMO.canary.model_copy(update={"shadow": True})})
    ensure_champion(spec, tracking)
    challenger = _register_challenger(spec, tracking)
    router = ModelRouter(spec, tracking)
    router.refresh()
    assert router.serving("shadow").version == challenger
    assert {router.variant_for(f"user-{i}", f"e-{i}") for i in range(5000)} == {"champion"}


def test_canary_by_entity_keeps_each_entity_on_one_variant_and_cannot_split_one_entity(tracking):
    spec = DEMO.model_copy(update={"canary": DEMO.canary.model_copy(update={"assign": "entity"})})
    ensure_champion(spec, tracking)
    _register_challenger(spec, tracking)
    router = ModelRouter(spec, tracking)
    router.refresh()
    share = sum(router.variant_for(f"user-{i}", "e-1") == "canary" for i in range(20_000)) / 20_000
    assert share == pytest.approx(spec.canary.share, abs=0.01)
    assert len({router.variant_for("nsw", f"e-{i}") for i in range(5000)}) == 1  # why `event` is the default


def test_a_tampered_challenger_is_refused_once_and_the_champion_keeps_serving(tracking, tmp_path):
    champion = ensure_champion(DEMO, tracking).version
    refusals = []
    router = ModelRouter(DEMO, tracking, on_refused=lambda refusal, serving: refusals.append((str(refusal), serving)))
    router.refresh()
    challenger = _register_challenger(DEMO, tracking)
    stored = [
        p
        for p in (tmp_path / "artifacts").rglob("artifacts/model/*")
        if p.is_file() and _belongs_to(p, challenger, tracking)
    ]
    assert stored, "the challenger's model file was not found in the artifact store"
    for path in stored:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    assert router.refresh() == [] and router.refresh() == []  # the second poll neither downloads nor reports it
    assert len(refusals) == 1 and "checksum mismatch" in refusals[0][0] and refusals[0][1] is None
    assert set(router.variants) == {"champion"} and router.serving("champion").version == champion
    assert len(router.serving("champion").model.predict_proba(TRAIN[:5])) == 5


def _belongs_to(path, version: int, tracking_uri: str) -> bool:
    """Whether an artifact file is the given version's (MLflow 3 keeps logged models under models/<id>)."""
    from mlflow.tracking import MlflowClient

    source = (
        MlflowClient(tracking_uri, registry_uri=tracking_uri).get_model_version(DEMO.model.name, str(version)).source
    )
    model_id = source.rstrip("/").split("/")[-1]
    return model_id in str(path)
