"""The aggregation extension point (driftloop.features.aggregations): what a newcomer's class is held to
when it is defined and registered, and how its `finish` reaches the compiled update. Whether each
registered aggregation computes what it defines is tests/unit/test_windows.py's cross-check."""

from __future__ import annotations

import pytest

from driftloop.features.aggregations import AGGREGATIONS, REGISTERED, _load
from driftloop.features.aggregations.base import LARGEST, N_VALUES, TOTAL, Aggregation, Extreme
from driftloop.features.windows import FeatureComputer
from tests.support.windows import feature, window_spec


def test_finish_parameters_must_name_what_it_can_read():
    with pytest.raises(
        TypeError,
        match=r"Bad: finish\(mean\): its parameters are named from value, count, since, "
        r"n_values",
    ):

        class Bad(Aggregation):
            name = "bad"
            statistics = (N_VALUES,)

            @staticmethod
            def finish(mean):
                return mean

            @staticmethod
            def define(window):
                return 0.0


def test_a_statistic_that_finish_does_not_read_is_refused():
    with pytest.raises(TypeError, match=r"finish does not read the statistics \['total'\]"):

        class Wasteful(Aggregation):
            name = "wasteful"
            statistics = (N_VALUES, TOTAL)

            @staticmethod
            def finish(n_values):
                return float(n_values)

            @staticmethod
            def define(window):
                return 0.0


def test_finish_and_define_must_be_static_methods():
    with pytest.raises(TypeError, match="`finish` must be a @staticmethod"):

        class Method(Aggregation):
            name = "method"

            def finish(self, value):
                return value

            @staticmethod
            def define(value):
                return value


def test_whether_it_needs_a_field_and_a_window_follows_from_what_finish_reads():
    assert (AGGREGATIONS["count"].needs_field, AGGREGATIONS["count"].windowed) == (False, True)
    assert (AGGREGATIONS["mean"].needs_field, AGGREGATIONS["mean"].windowed) == (True, True)
    assert (AGGREGATIONS["time_since_last"].needs_field, AGGREGATIONS["time_since_last"].windowed) == (False, False)


class Peak(Aggregation):
    """Registered by the test below: its statistic reuses LARGEST's layout code for the smallest value."""

    name = "peak"
    statistics = (Extreme("peak", LARGEST.code, largest=False),)

    @staticmethod
    def finish(peak):
        return 0.0 if peak is None else peak

    @staticmethod
    def define(window):
        return 0.0


def test_the_registry_refuses_a_taken_name_and_a_statistic_code_meaning_two_things():
    with pytest.raises(TypeError, match="the name 'count' is already Count's"):
        _load((*REGISTERED, "driftloop.features.aggregations.builtin:Count"))
    with pytest.raises(TypeError, match="statistic code 'x' is already"):
        _load((*REGISTERED, f"{__name__}:Peak"))


def test_one_expression_finishes_are_inlined_and_others_called():
    source = FeatureComputer(window_spec([feature("mean", "sl10"), feature("std", "sl10")])).update_source
    assert "f0 = (run0[4] + v0) / (run0[3] + 1) if v0 is not None" in source  # mean, inlined
    assert "f1 = F1(v0, run0[3], run0[4], run0[5])" in source  # std's finish has several statements
