"""Canary promotion: the controller's trials and decisions and the operator commands, on a real
MLflow SQLite registry."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import yaml
from scipy import stats

from driftloop.errors import DriftloopError
from driftloop.models import registry
from driftloop.models.flavors import new_model
from driftloop.settings import DEMO_SPEC
from driftloop.spec import PipelineSpec, parse_spec
from driftloop.streams.contracts import iso_time
from driftloop.streams.control.promotion import operator
from driftloop.streams.control.promotion.alias_moves import PROMOTED_AT_TAG, REJECTED_TAG
from driftloop.streams.control.promotion.controller import PromotionController
from driftloop.streams.control.promotion.significance import fisher_fewer_errors, mcnemar_fewer_errors
from driftloop.streams.control.promotion.trial import look_schedule
from tests.support.clock import Clock

START = 1_795_435_200.0  # 2026-11-23 12:00 UTC


def make_spec(**canary) -> PipelineSpec:
    document = yaml.safe_load(DEMO_SPEC.read_text())
    document["canary"].update(canary)
    document["model"].update(flavor="river", estimator="logistic_regression")  # a model that can start cold
    return parse_spec(document, "test")


SPEC = make_spec()
NAME = SPEC.model.name


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry database holding versions 1, 2 and 3 of the demo model (registering takes a while)."""
    directory = tmp_path_factory.mktemp("promotion-registry")
    uri = f"sqlite:///{directory}/mlflow.db"
    registry.ensure_experiment(SPEC.name, tracking_uri=uri, artifact_location=str(directory / "artifacts"))
    for _ in range(3):
        registry.register(new_model(SPEC), SPEC, tracking_uri=uri, reference_rows=[])
    return directory / "mlflow.db"


@pytest.fixture
def tracking(tmp_path: Path, registry_template: Path) -> str:
    """A fresh copy of the registry: versions 1-3, champion v1, challenger v2."""
    shutil.copyfile(registry_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry.set_alias(NAME, "champion", 1, tracking_uri=uri)
    registry.set_alias(NAME, "challenger", 2, tracking_uri=uri)
    return uri


def labeled(
    predicted_at: float,
    *,
    variant: str = "champion",
    version: int = 1,
    wrong: bool = False,
    model_ms: float = 4.0,
    shadow: dict | None = None,
) -> dict:
    """A labeled record as streams/worker/join.py writes it (label 0: a wrong decision is a false alarm)."""
    record = {
        "contract": 1,
        "event_id": f"e-{predicted_at}",
        "entity": "u-1",
        "event_time": iso_time(predicted_at),
        "score": 0.9 if wrong else 0.1,
        "decision": int(wrong),
        "label": 0,
        "model_name": NAME,
        "model_version": version,
        "variant": variant,
        "features": {},
        "predicted_at": iso_time(predicted_at),
        "joined_at": iso_time(predicted_at + 5),
        "model_ms": model_ms,
    }
    if shadow is not None:
        record["shadow"] = shadow
    return record


def canary_stream(
    *,
    champion_error: float,
    challenger_error: float,
    n: int,
    start: float = START + 1,
    champion: int = 1,
    challenger: int = 2,
    challenger_latency_ms: float = 4.0,
    seed: int = 0,
) -> Iterator[dict]:
    """Labelled events of the canary mode: 10% of them (spec canary.share) served by the challenger."""
    rnd = random.Random(seed)
    for i in range(n):
        canary = rnd.random() < SPEC.canary.share
        yield labeled(
            start + i * 0.005,
            variant="canary" if canary else "champion",
            version=challenger if canary else champion,
            wrong=rnd.random() < (challenger_error if canary else champion_error),
            model_ms=challenger_latency_ms if canary else 4.0,
        )


def shadow_stream(*, champion_error: float, challenger_error: float, n: int, seed: int = 0) -> Iterator[dict]:
    """Shadow mode: every event served by the champion and also scored by the challenger."""
    rnd = random.Random(seed)
    for i in range(n):
        challenger_wrong = rnd.random() < challenger_error
        yield labeled(
            START + 1 + i * 0.005,
            wrong=rnd.random() < champion_error,
            shadow={"model_version": 2, "score": 0.9 if challenger_wrong else 0.1},
        )


def feed(controller: PromotionController, records: Iterable[dict]) -> list[dict]:
    return [json.loads(out) for record in records for out in controller.update(record)]


def started(tracking: str, spec: PipelineSpec = SPEC, clock: Clock | None = None) -> PromotionController:
    controller = PromotionController(spec, tracking, clock=clock or Clock(START))
    [trial_started] = [json.loads(r) for r in controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking))]
    assert (trial_started["actor"], trial_started["action"], trial_started["version"]) == (
        "promotion",
        "trial_started",
        2,
    )
    return controller


def actions(records: list[dict]) -> list[str]:
    return [r["action"] for r in records]


# --- the statistics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "errors_a,n_a,errors_b,n_b",
    [(4, 300, 190, 2700), (0, 50, 3, 60), (30, 400, 28, 3600), (250, 5000, 2300, 45000), (0, 0, 5, 10)],
)
def test_fisher_p_value_equals_scipy(errors_a, n_a, errors_b, n_b):
    expected = (
        1.0
        if n_a == 0
        else stats.fisher_exact([[errors_a, n_a - errors_a], [errors_b, n_b - errors_b]], alternative="less").pvalue
    )
    assert fisher_fewer_errors(errors_a, n_a, errors_b, n_b) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("wins,losses", [(17, 2), (5, 5), (0, 9), (140, 110), (0, 0)])
def test_mcnemar_p_value_equals_scipy(wins, losses):
    expected = stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    assert mcnemar_fewer_errors(wins, losses) == pytest.approx(expected, rel=1e-9)


def test_looks_double_from_min_samples_up_to_max_samples():
    assert look_schedule(300, 5000) == [300, 600, 1200, 2400, 4800, 5000]
    assert look_schedule(300, 300) == [300]


# --- the controller ----------------------------------------------------------------------------------------


def test_better_canary_is_promoted_at_min_samples(tracking):
    controller = started(tracking)
    records = feed(controller, canary_stream(champion_error=0.07, challenger_error=0.015, n=6000))

    [promoted] = records
    assert (promoted["actor"], promoted["action"], promoted["version"]) == ("promotion", "promoted", 2)
    assert "significantly better" in promoted["reason"]
    details = promoted["details"]
    challenger, champion = details["challenger"], details["champion"]
    assert challenger["samples"] == SPEC.canary.min_samples  # decided at the first look
    assert champion["samples"] > 5 * challenger["samples"]
    # the controller's p-value is scipy's Fisher exact test on the same counts
    expected = stats.fisher_exact(
        [
            [challenger["errors"], challenger["samples"] - challenger["errors"]],
            [champion["errors"], champion["samples"] - champion["errors"]],
        ],
        alternative="less",
    ).pvalue
    assert details["p_better"] == pytest.approx(expected, rel=1e-9)
    assert details["p_better"] < details["look_alpha"] == pytest.approx(0.05 / 6)

    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 2, "previous": 1}
    assert PROMOTED_AT_TAG in registry.version_tags(NAME, 2, tracking_uri=tracking)
    assert controller.state()["last_decision"]["action"] == "promoted"
    assert controller.state()["trial"] is None
    # its own move is not audited again as someone else's
    assert controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking)) == []


def test_worse_canary_is_rolled_back_and_tagged(tracking):
    controller = started(tracking)
    records = feed(controller, canary_stream(champion_error=0.03, challenger_error=0.15, n=6000))

    [rolled_back] = records
    assert (rolled_back["action"], rolled_back["version"]) == ("rolled_back", 2)
    assert "significantly worse" in rolled_back["reason"]
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 1}
    assert "significantly worse" in registry.version_tags(NAME, 2, tracking_uri=tracking)[REJECTED_TAG]


def test_inconclusive_trial_rolls_back_at_max_samples(tracking):
    spec = make_spec(min_samples=100, max_samples=400)
    controller = started(tracking, spec)
    records = feed(controller, canary_stream(champion_error=0.05, challenger_error=0.05, n=8000, seed=3))

    assert actions(records) == ["canary_waiting", "canary_waiting", "rolled_back"]
    assert [r["details"]["challenger"]["samples"] for r in records] == [100, 200, 400]
    assert all(r["details"]["p_better"] > r["details"]["look_alpha"] for r in records)
    assert "no significant difference after 400 labelled events per arm" in records[-1]["reason"]
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 1}
    assert "canary.max_samples" in registry.version_tags(NAME, 2, tracking_uri=tracking)[REJECTED_TAG]


def test_a_canary_arm_that_gets_no_events_is_reported_starved_once(tracking):
    spec = make_spec(assign="entity")  # the one entity of the stream hashed outside the canary share
    controller = started(tracking, spec)
    records = feed(controller, (labeled(START + 1 + i) for i in range(3000)))

    [starved] = records
    assert (starved["actor"], starved["action"], starved["version"]) == ("promotion", "trial_starved", 2)
    # at canary.share 0.1, 2,700 champion events would have put canary.min_samples 300 on the canary
    assert "canary arm got 0 of the 2,700 labelled events" in starved["reason"]
    assert "use canary.assign: event" in starved["reason"]
    assert controller.state()["trial"]["champion"]["samples"] == 3000  # the trial goes on: a warning, no decision


def test_a_trial_that_cannot_reach_min_samples_within_max_length_warns_then_rolls_back(tracking):
    spec = make_spec(max_length="2h")  # 10 % canary: ~72 events by then, under min_samples 300
    wall = Clock(START)
    controller = started(tracking, spec, wall)
    stream = list(canary_stream(champion_error=0.05, challenger_error=0.05, n=8000, seed=3))
    for i, record in enumerate(stream):  # one event every 10 s of event time, all predicted in one wall second
        record["event_time"] = iso_time(START + 10 * i)
    records = feed(controller, stream)

    assert actions(records) == ["trial_starved", "rolled_back"]
    starved, rolled_back = records
    assert starved["details"]["labelled_events"] == 73  # a tenth of the 2h passed: a rate to project from
    assert "reaches canary.min_samples 300 after about" in starved["reason"]
    assert "beyond canary.max_length 2h" in starved["reason"]
    assert rolled_back["details"]["event_time_spanned"] == "2h"
    assert (
        "no decision within canary.max_length 2h (721 labelled events over 2h of event time)" in (rolled_back["reason"])
    )
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 1}


@pytest.mark.parametrize(
    "stream,reason",
    [
        (dict(challenger_error=0.7), "canary.max_error_rate"),
        (dict(challenger_error=0.01, challenger_latency_ms=400.0), "canary.max_latency_ms"),
    ],
)
def test_guardrail_rolls_back_after_50_canary_events(tracking, stream, reason):
    controller = started(tracking)
    records = feed(controller, canary_stream(champion_error=0.05, n=3000, **stream))

    [rolled_back] = records
    assert rolled_back["action"] == "rolled_back"
    assert rolled_back["reason"].startswith("guardrail") and reason in rolled_back["reason"]
    assert rolled_back["details"]["challenger"]["samples"] == 50
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 1}


def test_shadow_mode_promotes_on_mcnemar(tracking):
    spec = make_spec(shadow=True)
    controller = started(tracking, spec)
    assert controller.state()["trial"]["test"] == "exact McNemar"
    # served canary records are not part of a shadow trial
    assert feed(controller, canary_stream(champion_error=0.07, challenger_error=0.0, n=3000)) == []
    assert controller.state()["trial"]["challenger"]["samples"] == 0

    records = feed(controller, shadow_stream(champion_error=0.07, challenger_error=0.015, n=3000))
    # this stream's first 300 events happen to be inconclusive (p=0.026 > 0.05/6); the next look decides
    assert actions(records) == ["canary_waiting", "promoted"]
    promoted = records[-1]
    details = promoted["details"]
    assert details["test"] == "exact McNemar"
    assert details["champion"]["samples"] == details["challenger"]["samples"] == 2 * spec.canary.min_samples
    wins = details["discordant"]["challenger_right_champion_wrong"]
    losses = details["discordant"]["challenger_wrong_champion_right"]
    assert details["p_better"] == pytest.approx(
        stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue, rel=1e-9
    )
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 2, "previous": 1}


def test_records_predicted_before_the_trial_started_do_not_count(tracking):
    controller = started(tracking)
    earlier = canary_stream(champion_error=0.0, challenger_error=1.0, n=3000, start=START - 60)
    assert feed(controller, earlier) == []  # a guardrail would have fired, had they counted
    assert controller.state()["trial"]["challenger"]["samples"] == 0
    assert controller.state()["trial"]["champion"]["samples"] == 0

    feed(controller, canary_stream(champion_error=0.05, challenger_error=0.05, n=100))
    trial = controller.state()["trial"]
    assert trial["challenger"]["samples"] + trial["champion"]["samples"] == 100


def test_alias_moved_behind_the_controllers_back_is_audited_and_starts_a_new_trial(tracking):
    clock = Clock(START)
    controller = started(tracking, clock=clock)
    feed(controller, canary_stream(champion_error=0.05, challenger_error=0.05, n=500))

    registry.set_alias(NAME, "challenger", 3, tracking_uri=tracking)  # what the MLflow UI does
    clock.now += 1
    moved, trial_started = [
        json.loads(r) for r in controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking))
    ]
    assert (moved["actor"], moved["action"]) == ("operator", "alias_moved")
    assert moved["details"] == {"from": {"champion": 1, "challenger": 2}, "to": {"champion": 1, "challenger": 3}}
    assert "challenger v2 -> v3" in moved["reason"]
    assert (trial_started["action"], trial_started["version"]) == ("trial_started", 3)

    trial = controller.state()["trial"]
    assert (trial["challenger_version"], trial["challenger"]["samples"], trial["champion"]["samples"]) == (3, 0, 0)
    # the old challenger's events and those from before the new trial do not count for v3
    feed(controller, canary_stream(champion_error=0.05, challenger_error=0.05, n=500, start=START + 2))
    feed(controller, canary_stream(champion_error=0.05, challenger_error=0.05, n=500, challenger=3, start=START - 10))
    assert controller.state()["trial"]["challenger"]["samples"] == 0
    assert controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking)) == []


def test_a_snapshot_older_than_the_controllers_own_move_is_not_taken_for_an_operator(tracking):
    clock = Clock(START)
    controller = started(tracking, clock=clock)
    before = registry.aliases(NAME, tracking_uri=tracking)
    [promoted] = feed(controller, canary_stream(champion_error=0.07, challenger_error=0.015, n=6000))
    # a poll that read the registry just before the promotion, handed over just after it
    assert controller.observe_aliases(before) == []
    assert controller.state()["champion"] == 2
    # the same state seen long after the controller left it is someone moving the aliases back
    clock.now += 60
    assert actions([json.loads(r) for r in controller.observe_aliases(before)]) == ["alias_moved", "trial_started"]


def test_a_challenger_set_by_retraining_starts_a_trial_without_an_operator_record(tracking):
    clock = Clock(START)
    controller = started(tracking, clock=clock)
    registry.set_version_tag(NAME, 3, "driftloop.origin", "retrain", tracking_uri=tracking)
    registry.set_alias(NAME, "challenger", 3, tracking_uri=tracking)  # the retraining worker audits this itself
    clock.now += 1
    [trial_started] = [json.loads(r) for r in controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking))]
    assert (trial_started["action"], trial_started["version"]) == ("trial_started", 3)


def test_decision_waits_for_an_unreachable_registry_and_is_published_once(tracking, tmp_path):
    # The controller reaches the registry database through a path that is, at first, blocked by a
    # plain file; making it a link to the database's directory brings the registry back.
    gateway = tmp_path / "gateway"
    gateway.write_text("not a directory: the registry is unreachable through here")
    clock = Clock(START)
    controller = PromotionController(SPEC, f"sqlite:///{gateway}/mlflow.db", clock=clock)
    controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking))
    records = canary_stream(champion_error=0.07, challenger_error=0.015, n=6000)
    published = []
    for record in records:
        published += controller.update(record)
        if controller.state()["pending"] is not None:
            break
    assert published == []
    pending = controller.state()["pending"]
    assert (pending["action"], pending["version"], pending["failed_attempts"]) == ("promoted", 2, 1)
    assert controller.update(next(records)) == []  # within RETRY_SECONDS: not even tried
    clock.now += 5
    assert controller.update(next(records)) == []  # tried again, still unreachable
    assert controller.state()["pending"]["failed_attempts"] == 2
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 1, "challenger": 2}

    gateway.unlink()
    gateway.symlink_to(tmp_path, target_is_directory=True)
    clock.now += 5
    published = [json.loads(r) for record in records for r in controller.update(record)]
    published += [json.loads(r) for r in controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking))]
    assert actions(published) == ["promoted"]
    assert published[0]["details"]["failed_registry_attempts"] == 2
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 2, "previous": 1}
    assert controller.state()["pending"] is None


# --- operator commands -------------------------------------------------------------------------------------


def test_operator_promote_moves_the_aliases_and_the_controller_does_not_audit_it_twice(tracking):
    clock = Clock(START)
    controller = started(tracking, clock=clock)

    record = json.loads(operator.promote(SPEC, tracking, None))
    assert (record["actor"], record["action"], record["version"]) == ("operator", "promoted", 2)
    assert record["details"] == {"from": {"champion": 1, "challenger": 2}, "to": {"champion": 2, "previous": 1}}
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 2, "previous": 1}
    assert PROMOTED_AT_TAG in registry.version_tags(NAME, 2, tracking_uri=tracking)

    clock.now += 1
    assert controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking)) == []
    assert controller.state()["trial"] is None and controller.state()["champion"] == 2

    # moving the same way again by hand is somebody else's move, and audited
    registry.set_alias(NAME, "champion", 1, tracking_uri=tracking)
    clock.now += 1
    controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking))
    registry.set_alias(NAME, "champion", 2, tracking_uri=tracking)
    clock.now += 1
    [moved] = [json.loads(r) for r in controller.observe_aliases(registry.aliases(NAME, tracking_uri=tracking))]
    assert moved["action"] == "alias_moved"


def test_operator_promote_of_a_named_version(tracking):
    record = json.loads(operator.promote(SPEC, tracking, 3))
    assert record["version"] == 3
    # the challenger was another version: its trial goes on against the new champion
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 3, "previous": 1, "challenger": 2}


def test_operator_rollback_removes_the_challenger_then_restores_the_previous_champion(tracking):
    record = json.loads(operator.rollback(SPEC, tracking, None))
    assert (record["actor"], record["action"], record["version"]) == ("operator", "rolled_back", 2)
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 1}
    assert registry.version_tags(NAME, 2, tracking_uri=tracking)[REJECTED_TAG] == "rolled back by operator"

    operator.promote(SPEC, tracking, 3)
    record = json.loads(operator.rollback(SPEC, tracking, None))
    assert (record["action"], record["version"]) == ("rolled_back", 1)
    assert record["details"]["to"] == {"champion": 1}
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 1}
    assert registry.version_tags(NAME, 3, tracking_uri=tracking)[REJECTED_TAG] == "rolled back by operator to v1"

    with pytest.raises(DriftloopError, match="no challenger and no previous champion"):
        operator.rollback(SPEC, tracking, None)
    operator.rollback(SPEC, tracking, 2)
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 2}


def test_operator_misuse_is_refused_with_a_clear_message(tracking):
    with pytest.raises(DriftloopError, match="has no version 9"):
        operator.promote(SPEC, tracking, 9)
    with pytest.raises(DriftloopError, match="v1 is already the champion"):
        operator.promote(SPEC, tracking, 1)
    with pytest.raises(DriftloopError, match="has no version 9"):
        operator.rollback(SPEC, tracking, 9)
    operator.rollback(SPEC, tracking, None)  # the challenger goes
    with pytest.raises(DriftloopError, match="has no challenger to promote"):
        operator.promote(SPEC, tracking, None)
    with pytest.raises(DriftloopError, match="v1 is already the champion"):
        operator.rollback(SPEC, tracking, 1)
    assert registry.aliases(NAME, tracking_uri=tracking) == {"champion": 1}
