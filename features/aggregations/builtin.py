"""The aggregations driftloop comes with. Each `finish` is one expression, so the compiled update inlines it."""

from __future__ import annotations

from driftloop.features.aggregations.base import LARGEST, N_VALUES, SMALLEST, TOTAL, Aggregation, present


class Count(Aggregation):
    """The number of events in the window, this one included (an event whose field is None still counts)."""

    name = "count"

    @staticmethod
    def finish(count):
        return count + 1.0

    @staticmethod
    def define(window):
        return len(window) + 1.0


class Sum(Aggregation):
    """The sum of the field over the window; None values are skipped; 0.0 if there is none."""

    name = "sum"
    statistics = (TOTAL,)

    @staticmethod
    def finish(value, total):
        return total + value if value is not None else total + 0.0

    @staticmethod
    def define(window, value):
        return float(sum(present(window, value)))


class Mean(Aggregation):
    """The sum over the number of non-None values; 0.0 if there is none."""

    name = "mean"
    statistics = (N_VALUES, TOTAL)

    @staticmethod
    def finish(value, n_values, total):
        return (total + value) / (n_values + 1) if value is not None else total / n_values if n_values else 0.0

    @staticmethod
    def define(window, value):
        values = present(window, value)
        return sum(values) / len(values) if values else 0.0


class Max(Aggregation):
    """The largest non-None value in the window; 0.0 if there is none."""

    name = "max"
    statistics = (LARGEST,)

    @staticmethod
    def finish(value, largest):
        return (
            (value if largest is None or value > largest else largest)
            if value is not None
            else 0.0
            if largest is None
            else largest
        )

    @staticmethod
    def define(window, value):
        return max(present(window, value), default=0.0)


class Min(Aggregation):
    """The smallest non-None value in the window; 0.0 if there is none."""

    name = "min"
    statistics = (SMALLEST,)

    @staticmethod
    def finish(value, smallest):
        return (
            (value if smallest is None or value < smallest else smallest)
            if value is not None
            else 0.0
            if smallest is None
            else smallest
        )

    @staticmethod
    def define(window, value):
        return min(present(window, value), default=0.0)


class RatioToMean(Aggregation):
    """The value over the mean of the field over the window's OTHER events (those already seen); 1.0 when
    the value is None, when no other event in the window has a value, or when that mean is 0."""

    name = "ratio_to_mean"
    statistics = (N_VALUES, TOTAL)

    @staticmethod
    def finish(value, n_values, total):
        return value / (total / n_values) if value is not None and n_values and total / n_values else 1.0

    @staticmethod
    def define(window, value):
        others = present(window, None)
        mean = sum(others) / len(others) if others else 0.0
        return value / mean if value is not None and mean else 1.0


class TimeSinceLast(Aggregation):
    """Seconds since the entity's previous event, capped at spec.feature_ttl; the entity's first event gets
    feature_ttl ("long ago"). Events at the same time give 0.0. It takes no field and no window."""

    name = "time_since_last"

    @staticmethod
    def finish(since):
        return since

    @staticmethod
    def define(since):
        return since
