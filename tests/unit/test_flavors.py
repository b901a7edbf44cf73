"""Every registered flavor, each of its estimators, passes the flavor contract (driftloop/models/checks.py).

A flavor added to driftloop/models/flavors.py is tested here without new test code.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from driftloop.models.checks import Trial, yield_checks
from driftloop.models.flavors import FLAVORS

CASES = [
    (flavor, estimator, check)
    for flavor in FLAVORS.values()
    for estimator in flavor.estimators
    for check in yield_checks(flavor)
]
_TRIALS: dict[tuple[str, str], Trial] = {}  # one per estimator: its model is trained once for all its checks


@pytest.mark.parametrize(
    "flavor, estimator, check", CASES, ids=[f"{f.flavor}-{e}-{c.__name__.removeprefix('check_')}" for f, e, c in CASES]
)
def test_flavor_contract(flavor, estimator, check):
    trial = _TRIALS.get((flavor.flavor, estimator))
    if trial is None:
        trial = _TRIALS[flavor.flavor, estimator] = Trial(flavor, estimator)
    check(trial)


def test_the_contract_catches_a_flavor_that_breaks_it():
    from driftloop.models.checks import check_save_load_round_trip
    from driftloop.models.river_flavor import RiverModel

    class Forgetful(RiverModel):
        """Saves its pipeline but loads a fresh, untrained one."""

        @classmethod
        def load(cls, directory):
            loaded = super().load(directory)
            loaded.pipeline = cls.new(Trial(RiverModel, "logistic_regression").spec).pipeline
            return loaded

    with pytest.raises(AssertionError, match="the loaded model scores differently"):
        check_save_load_round_trip(Trial(Forgetful, "logistic_regression"))


def test_checking_a_spec_leaves_the_model_libraries_unimported():
    """Spec checks read every flavor's estimators; River and scikit-learn take seconds to import."""
    code = (
        "import sys; from driftloop.settings import DEMO_SPEC; from driftloop.spec import load_spec; "
        "load_spec(DEMO_SPEC); print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'river', 'sklearn', 'skl2onnx', 'onnxruntime'}))"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert imported.stdout.strip() == "[]"
