"""The contract every model flavor passes, as River's `check_estimator` is for River's estimators.

    >>> from driftloop.models.checks import check_flavor
    >>> from driftloop.models.river_flavor import RiverModel
    >>> check_flavor(RiverModel, estimators=["logistic_regression"])  # raises AssertionError naming a broken rule

`yield_checks(flavor)` yields the checks; each takes a `Trial` (one estimator of the flavor, the demo spec
with that model, and labelled rows with every kind of input) and raises AssertionError saying which rule
the flavor breaks. tests/unit/test_flavors.py runs every check on every estimator of every registered flavor,
so a new flavor is tested without new test code. The rules are what the rest of driftloop relies on:

- the declaration: a name, estimators, a file name of its own, installed requirements;
- estimator choice: an unknown estimator or parameter is a DriftloopError naming it;
- cold start: a cold_start flavor's `new` model scores 0.5 (no opinion) and saves; another flavor refuses;
- scoring: float64 probabilities in [0, 1] for rows with missing values, unseen or missing categories,
  NaN, absent or extra keys, and an empty batch; a batch scores as its rows one by one (the scorer splits
  batches around rows a model cannot score);
- learning: it learns a pattern carried by a number, a category and a bool;
- save and load: one file, and the loaded model scores (and, online, keeps learning) exactly as the saved;
- online semantics: `learn` changes the scores in place; a batch flavor's `learn` raises NotImplementedError;
- training labels: mismatched lengths are a ValueError; rows of one label are a DriftloopError for a batch
  flavor, and are learned by an online one;
- speed: a batch of 500 rows scores within a second.
"""

from __future__ import annotations

import importlib.metadata
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from driftloop.errors import DriftloopError
from driftloop.models.flavors import FLAVORS, with_model
from driftloop.models.model import Model
from driftloop.schema import model_inputs
from driftloop.spec import UNSEEN, PipelineSpec, parse_spec

RISKY = ("electronics", "gaming")
BATCH_SECONDS = 1.0  # the most a batch of 500 rows may take to score


def demo_spec() -> PipelineSpec:
    """The demo spec (card fraud): numeric features and fields, an optional int, categories and a bool."""
    from driftloop.settings import DEMO_SPEC

    return parse_spec(yaml.safe_load(DEMO_SPEC.read_text()), str(DEMO_SPEC))


def labelled_rows(spec: PipelineSpec, n: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[int]]:
    """Demo-spec rows; fraud = amount > 500 and a risky merchant category, with 3% label noise."""
    rnd = random.Random(seed)
    fields = spec.events.fields
    categories, countries, channels = (
        fields[name].values or () for name in ("merchant_category", "country", "channel")
    )
    others = [c for c in categories if c not in RISKY]
    rows, labels = [], []
    for _ in range(n):
        amount = rnd.expovariate(1 / 600)
        category = rnd.choice(RISKY) if rnd.random() < 0.5 else rnd.choice(others)
        rows.append(
            {
                "txn_count_10m": float(rnd.randint(1, 10)),
                "amount_sum_1h": amount * rnd.uniform(1, 3),
                "amount_max_24h": amount * rnd.uniform(1, 2),
                "amount_mean_24h": amount * rnd.uniform(0.5, 1),
                "amount_ratio_to_mean_24h": rnd.uniform(0.5, 3),
                "secs_since_last_txn": rnd.uniform(0, 86400),
                "amount": amount,
                "merchant_category": category,
                "country": rnd.choice(countries),
                "channel": rnd.choice(channels),
                "card_present": rnd.random() < 0.5,
                "account_age_days": None if rnd.random() < 0.1 else float(rnd.randint(0, 5000)),
            }
        )
        label = int(amount > 500 and category in RISKY)
        labels.append(1 - label if rnd.random() < 0.03 else label)
    return rows, labels


def odd_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as they can reach a model: missing optional values, unseen and missing categories, NaN, an int
    where floats are usual, absent keys, extra keys."""
    odd = [dict(row) for row in rows[:20]]
    for i, row in enumerate(odd):
        row["account_age_days"] = None
        if i % 2:
            row.update(merchant_category=UNSEEN, country=UNSEEN, channel=UNSEEN)
        if i % 4 == 2:
            row.update(merchant_category=None, amount=int(row["amount"]), amount_mean_24h=float("nan"))
    odd[3] = {"amount": 900.0}
    odd[4]["not_an_input"] = "ignored"
    return odd + [{}]


class Trial:
    """One estimator of a flavor on the demo spec, with its training and test rows; `model` is trained once
    (checks must not change it), `fresh()` trains another."""

    def __init__(self, flavor: type[Model], estimator: str):
        self.flavor, self.estimator = flavor, estimator
        self.spec = with_model(demo_spec(), flavor.flavor, estimator)
        rows, labels = labelled_rows(self.spec, 3000)
        self.train_rows, self.train_labels = rows[:2000], labels[:2000]
        self.test_rows, self.test_labels = rows[2000:], labels[2000:]
        self.odd_rows = odd_rows(self.test_rows)

    def fresh(self) -> Model:
        return self.flavor.train(self.spec, self.train_rows, self.train_labels)

    @cached_property
    def model(self) -> Model:
        return self.fresh()

    def __repr__(self) -> str:
        return f"{self.flavor.flavor}/{self.estimator}"


Check = Callable[[Trial], None]


def check_declaration(trial: Trial) -> None:
    flavor = trial.flavor
    assert re.fullmatch(r"[a-z][a-z0-9_]*", flavor.flavor), f"flavor {flavor.flavor!r}: lower-case identifier"
    assert flavor.estimators and all(isinstance(e, str) for e in flavor.estimators), "estimators: names"
    assert flavor.filename and Path(flavor.filename).name == flavor.filename, "filename: a file name"
    others = {other.filename: other.flavor for other in FLAVORS.values() if other.flavor != flavor.flavor}
    assert flavor.filename not in others, f"filename {flavor.filename} is also flavor {others.get(flavor.filename)}'s"
    for package in flavor.requirements:
        importlib.metadata.version(package)  # raises PackageNotFoundError: MLflow could not pin it


def check_estimator_choice(trial: Trial) -> None:
    spec = trial.spec
    unknown = spec.model_copy(update={"model": spec.model.model_copy(update={"estimator": "no_such_estimator"})})
    _raises(DriftloopError, trial.estimator, lambda: trial.flavor.train(unknown, trial.train_rows, trial.train_labels))
    bad_params = spec.model_copy(update={"model": spec.model.model_copy(update={"params": {"no_such_param": 1}})})
    _raises(
        DriftloopError, "no_such_param", lambda: trial.flavor.train(bad_params, trial.train_rows, trial.train_labels)
    )


def check_cold_start(trial: Trial) -> None:
    if not trial.flavor.cold_start:
        _raises(DriftloopError, "cold", lambda: trial.flavor.new(trial.spec))
        return
    cold = trial.flavor.new(trial.spec)
    scores = _scores(cold, trial.odd_rows)
    assert np.all(np.abs(scores - 0.5) <= 0.05), f"a cold model has no opinion (0.5), it scored {scores}"
    with tempfile.TemporaryDirectory() as directory:  # bootstrap registers cold models
        cold.save(directory)
        np.testing.assert_array_equal(trial.flavor.load(directory).predict_proba(trial.odd_rows), scores)


def check_columns(trial: Trial) -> None:
    expected = [(i.name, i.kind) for i in model_inputs(trial.spec)]
    assert [(c.name, c.kind) for c in trial.model.columns] == expected, "columns: the spec's inputs, in order"


def check_scores_odd_rows(trial: Trial) -> None:
    _scores(trial.model, trial.odd_rows)
    empty = trial.model.predict_proba([])
    assert isinstance(empty, np.ndarray) and empty.shape == (0,), "an empty batch scores as an empty array"
    with_extra, without = trial.odd_rows[4], {k: v for k, v in trial.odd_rows[4].items() if k != "not_an_input"}
    assert trial.model.predict_proba([with_extra])[0] == trial.model.predict_proba([without])[0], (
        "a key that is not an input changed the score"
    )


def check_batch_scores_as_single_rows(trial: Trial) -> None:
    rows = trial.test_rows[:50] + trial.odd_rows
    one_by_one = np.array([trial.model.predict_proba([row])[0] for row in rows])
    np.testing.assert_allclose(
        trial.model.predict_proba(rows),
        one_by_one,
        rtol=0,
        atol=1e-6,
        err_msg="a row scored differently alone than in its batch",
    )


def check_learns_each_kind_of_input(trial: Trial) -> None:
    rules = {
        "a number and a category": lambda row: row["amount"] > 500 or row["merchant_category"] in RISKY,
        "a bool": lambda row: row["card_present"],
    }
    for carried_by, rule in rules.items():
        model = trial.flavor.train(trial.spec, trial.train_rows, [int(rule(row)) for row in trial.train_rows])
        auc = _auc(model.predict_proba(trial.test_rows), [int(rule(row)) for row in trial.test_rows])
        assert auc > 0.95, f"labels carried by {carried_by}: ROC AUC {auc:.3f} after 2,000 rows, not above 0.95"


def check_save_load_round_trip(trial: Trial) -> None:
    model = trial.fresh()
    rows = trial.test_rows + trial.odd_rows
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "model"
        files = model.save(target)
        assert files == [target / trial.flavor.filename], f"save wrote {files}, not its one file"
        assert sorted(target.iterdir()) == files, "save left other files in the directory"
        again = trial.flavor.load(target)
    assert type(again) is trial.flavor and again.estimator == model.estimator, "load: another flavor or estimator"
    assert [(c.name, c.kind) for c in again.columns] == [(c.name, c.kind) for c in model.columns], "load: columns"
    np.testing.assert_array_equal(
        again.predict_proba(rows), model.predict_proba(rows), err_msg="the loaded model scores differently"
    )
    if trial.flavor.online:  # the worker replays learning onto a loaded champion: its state must be whole
        for learner in (model, again):
            learner.learn(trial.test_rows[:300], trial.test_labels[:300])
        np.testing.assert_array_equal(
            again.predict_proba(rows), model.predict_proba(rows), err_msg="the loaded model learns differently"
        )


def check_learn_semantics(trial: Trial) -> None:
    model = trial.fresh()
    if not trial.flavor.online:
        _raises(NotImplementedError, "", lambda: model.learn(trial.test_rows[:5], trial.test_labels[:5]))
        return
    before = model.predict_proba(trial.test_rows)
    model.learn(trial.odd_rows, [1] * len(trial.odd_rows))  # in place: the same model scores differently
    assert not np.array_equal(model.predict_proba(trial.test_rows), before), "learning left every score unchanged"
    _raises(ValueError, "", lambda: model.learn(trial.test_rows[:3], [0, 1]))


def check_training_labels(trial: Trial) -> None:
    _raises(ValueError, "", lambda: trial.flavor.train(trial.spec, trial.train_rows[:10], trial.train_labels[:9]))

    def one_label() -> Model:
        return trial.flavor.train(trial.spec, trial.train_rows[:200], [0] * 200)

    if trial.flavor.online:
        _scores(one_label(), trial.odd_rows)
    else:
        _raises(DriftloopError, "both labels", one_label)


def check_scores_500_rows_quickly(trial: Trial) -> None:
    batch = (trial.test_rows * 2)[:500]
    trial.model.predict_proba(batch)  # warm up
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        trial.model.predict_proba(batch)
        timings.append(time.perf_counter() - started)
    assert float(np.median(timings)) < BATCH_SECONDS, f"500 rows took {np.median(timings):.2f}s to score"


def yield_checks(flavor: type[Model]) -> Iterator[Check]:
    """The checks every flavor passes (each reads the flavor's online and cold_start to know its rule)."""
    yield from (
        check_declaration,
        check_estimator_choice,
        check_cold_start,
        check_columns,
        check_scores_odd_rows,
        check_batch_scores_as_single_rows,
        check_learns_each_kind_of_input,
        check_save_load_round_trip,
        check_learn_semantics,
        check_training_labels,
        check_scores_500_rows_quickly,
    )


def check_flavor(flavor: type[Model], estimators: Sequence[str] | None = None) -> None:
    """Run every check on each of the flavor's estimators (all by default); AssertionError on the first failure."""
    for estimator in estimators or flavor.estimators:
        trial = Trial(flavor, estimator)
        for check in yield_checks(flavor):
            check(trial)


def _scores(model: Model, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    scores = model.predict_proba(rows)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64, "predict_proba returns a float64 array"
    assert scores.shape == (len(rows),), f"{len(rows)} rows got {scores.shape} scores"
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1)), f"not probabilities: {scores}"
    return scores


def _auc(scores: np.ndarray, labels: Sequence[int]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _raises(kind: type[BaseException], words: str, call: Callable[[], Any]) -> None:
    try:
        call()
    except kind as exc:
        assert words in str(exc), f"{kind.__name__} {exc} does not say {words!r}"
        return
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")
