"""What a windowed aggregation is, for adding one (docs/extending-aggregations.md walks through it).

A spec feature `{name: amount_mean_24h, agg: mean, field: amount, window: {size: 24h}}` names an
`Aggregation` in the registry (`driftloop.features.aggregations`). The aggregation says which
`Statistic`s of the field every window must keep (the number of values, their total, their largest ...),
and how the feature finishes from them and the event's own value (`finish`). The feature computer
(`driftloop.features.windows`) keeps those statistics per window cell and per running window, shares
them between the features that read the same ones, and inlines `finish` into the `update` it compiles
for the spec. `define` says the same thing plainly, from the list of the window's values: the reference
computer (`driftloop.features.reference`) uses it, and the tests check every registered aggregation's
compiled path against it on random streams, for every window kind and for late events.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import math
import textwrap
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "LARGEST",
    "N_VALUES",
    "SMALLEST",
    "TOTAL",
    "Aggregation",
    "Extreme",
    "Statistic",
    "Total",
    "clamp",
    "inline",
    "present",
]

_BIG = 1.7976931348623157e308  # largest finite float: where overflowing results are clamped

# What `finish` can read besides the statistics of the aggregation's field.
EVENT_INPUTS = {
    "value": "the event's own field value: a finite float, or None (missing, not a number, NaN, infinite)",
    "count": "the number of the window's other events (those already seen; None values included)",
    "since": "seconds since the entity's previous event, at most feature_ttl (feature_ttl for its first)",
}
# What `define` can read.
DEFINE_INPUTS = {
    "window": "the field values (None included) of the window's other events, in no particular order",
    "value": EVENT_INPUTS["value"],
    "since": EVENT_INPUTS["since"],
}


def clamp(x: float) -> float:
    """A result as a finite float: an overflowed one as the nearest finite float, NaN (from inf - inf) as 0.0.

    >>> clamp(2.5), clamp(float("-inf")), clamp(float("nan"))
    (2.5, -1.7976931348623157e+308, 0.0)
    """
    if math.isfinite(x):
        return x
    return 0.0 if math.isnan(x) else math.copysign(_BIG, x)


def present(window: list[float | None], value: float | None) -> list[float]:
    """The values of the window and of the event that are not None: what most `define`s aggregate.

    >>> present([1.0, None, 3.0], None)
    [1.0, 3.0]
    """
    return [x for x in (*window, value) if x is not None]


@dataclass(frozen=True)
class Statistic(ABC):
    """A number of one field that every window keeps up to date as events arrive and leave.

    A window is a list of cells (one per event time, or per bucket) plus a running aggregate of the
    cells in the window. A statistic says what a cell holds for an event's value, how two cells merge,
    and how the running aggregate takes a value in and lets cells go. Two kinds cover what driftloop
    needs: a `Total` of a term per value (count, sum, sum of squares, ...) and an `Extreme` (max, min).
    Statistics are shared: features reading the same statistic of the same field over the same window
    read one running number, so two statistics are the same when they are equal.

    name   the `finish` parameter that receives it (and its name in the docs)
    code   one letter in the id of the state layout (a stored state whose layout id differs starts afresh)
    """

    name: str
    code: str

    slots: ClassVar[int] = 1  # numbers in the running aggregate

    @abstractmethod
    def empty(self) -> list:
        """The running aggregate's slots for a window with no value."""

    @abstractmethod
    def cell(self, v: float | None) -> Any:
        """What a new cell holds for one event's value."""

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """Two cells as one (b's events are later)."""

    @abstractmethod
    def include(self, run: list, slot: int, v: float, key: float) -> None:
        """Take a (non-None) value of the cell `key` into the running aggregate's slots."""

    @abstractmethod
    def aggregate(self, keys: list, cells: list, a: int, b: int) -> list:
        """The running aggregate's slots for cells[a:b]."""

    @abstractmethod
    def remove(self, run: list, slot: int, keys: list, cells: list, old: int, lo: int) -> None:
        """Cells[old:lo] left the window: update the running aggregate's slots (cells[lo:] remain)."""

    # Python source for the compiled update: `v` is a variable name, `cell` and `run` are expressions.
    @abstractmethod
    def cell_source(self, v: str) -> str:
        """An expression of what a new cell holds for the value `v` (which may be None)."""

    @abstractmethod
    def add_to_cell_source(self, cell: str, v: str) -> list[str]:
        """Statements adding the non-None value `v` into the cell."""

    @abstractmethod
    def include_source(self, run: str, slot: int, v: str) -> list[str]:
        """Statements taking the non-None value `v` of the cell `key` (the newest) into the running aggregate."""


@dataclass(frozen=True)
class Total(Statistic):
    """The total of `term` (a Python expression in `v`) over the window's non-None values.

    >>> squares = Total("squares", "q", term="v * v")
    >>> squares.cell(3.0), squares.cell(None), squares.merge(9.0, 4.0)
    (9.0, 0.0, 13.0)
    >>> squares.add_to_cell_source("cells[-1]", "v0")
    ['cells[-1] += v0 * v0']

    A running total drops the cells that leave by subtraction; when that leaves it at rounding noise of
    what it was, it is re-summed from the cells that remain (so a window left with zeros sums to 0.0).
    """

    term: str = "v"
    zero: float | int = 0.0
    _term: Callable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_term", eval(f"lambda v: {self.term}", {"__builtins__": builtins}))

    def _term_source(self, v: str) -> str:
        return substitute(self.term, {"v": v})

    def empty(self) -> list:
        return [self.zero]

    def cell(self, v):
        return self.zero if v is None else self._term(v)

    def merge(self, a, b):
        return a + b

    def include(self, run, slot, v, key):
        run[slot] += self._term(v)

    def aggregate(self, keys, cells, a, b):
        return [sum(cells[a:b], self.zero)]

    def remove(self, run, slot, keys, cells, old, lo):
        before = run[slot]
        rest = before - sum(cells[old:lo], self.zero)
        if before and abs(rest) * 1e12 <= abs(before):  # cancelled to rounding noise
            rest = sum(cells[lo:], self.zero)
        run[slot] = rest

    def cell_source(self, v):
        return f"{self.zero!r} if {v} is None else {self._term_source(v)}"

    def add_to_cell_source(self, cell, v):
        return [f"{cell} += {self._term_source(v)}"]

    def include_source(self, run, slot, v):
        return [f"{run}[{slot}] += {self._term_source(v)}"]


@dataclass(frozen=True)
class Extreme(Statistic):
    """The largest (or smallest) of the window's non-None values; None when there is none.

    The running aggregate also keeps the key of the latest cell holding it: when that cell leaves the
    window, the extreme is recomputed from the cells that remain.

    >>> LARGEST.cell(None), LARGEST.merge(2.0, 5.0), SMALLEST.merge(2.0, None)
    (None, 5.0, 2.0)
    """

    largest: bool = True

    slots: ClassVar[int] = 2  # the value, and the key of the latest cell holding it

    def _beats(self, x, y) -> bool:
        return x > y if self.largest else x < y

    def empty(self):
        return [None, None]

    def cell(self, v):
        return v

    def merge(self, a, b):
        return b if b is not None and (a is None or self._beats(b, a)) else a

    def include(self, run, slot, v, key):
        m = run[slot]
        if m is None or self._beats(v, m) or (v == m and key >= run[slot + 1]):
            run[slot] = v
            run[slot + 1] = key

    def aggregate(self, keys, cells, a, b):
        return _extreme(keys, cells, a, b, self.largest)

    def remove(self, run, slot, keys, cells, old, lo):
        if run[slot + 1] is not None and run[slot + 1] <= keys[lo - 1]:  # its cell left
            run[slot], run[slot + 1] = _extreme(keys, cells, lo, len(keys), self.largest)

    def cell_source(self, v):
        return v

    def add_to_cell_source(self, cell, v):
        return ["m = " + cell, f"if m is None or {v} {'>' if self.largest else '<'} m:", f"    {cell} = {v}"]

    def include_source(self, run, slot, v):
        return [
            f"m = {run}[{slot}]",
            f"if m is None or {v} {'>=' if self.largest else '<='} m:",
            f"    {run}[{slot}] = {v}",
            f"    {run}[{slot + 1}] = key",
        ]


N_VALUES = Total("n_values", "n", term="1", zero=0)  # how many of the window's values are not None
TOTAL = Total("total", "s", term="v")
LARGEST = Extreme("largest", "x", largest=True)
SMALLEST = Extreme("smallest", "m", largest=False)


class Aggregation:
    """A windowed aggregation a spec's features can name (`agg: <name>`).

    Subclass it with a `name`, the `statistics` of the field it reads, and two static methods:

    finish(...)  the feature from the statistics of the window's OTHER events (those already seen) and the
                 event's own value. Its parameters name what it reads: any of `value`, `count`, `since`
                 (see EVENT_INPUTS) and the names of its statistics. Written as a single `return`
                 expression it is inlined into the compiled update; otherwise it is called (~0.1 us/event).
    define(...)  the same feature by its plain definition, from `window` (the values of the window's other
                 events), `value` and `since`: what the cross-check tests hold `finish` to.

    Both return a float; a result that is not finite becomes the nearest finite float (`clamp`). A feature
    needs an event field when its aggregation reads `value` or a statistic, and a window when it reads
    `count` or a statistic. For instance, the mean (the registered `mean` is this):

    >>> class Mean(Aggregation):
    ...     name = "mean"
    ...     statistics = (N_VALUES, TOTAL)
    ...
    ...     @staticmethod
    ...     def finish(value, n_values, total):
    ...         return ((total + value) / (n_values + 1) if value is not None
    ...                 else total / n_values if n_values else 0.0)
    ...
    ...     @staticmethod
    ...     def define(window, value):
    ...         values = present(window, value)
    ...         return sum(values) / len(values) if values else 0.0
    >>> Mean.finish(value=4.0, n_values=2, total=2.0), Mean.define([1.0, None, 1.0], 4.0)
    (2.0, 2.0)
    >>> Mean.needs_field, Mean.windowed
    (True, True)
    """

    name: ClassVar[str]
    statistics: ClassVar[tuple[Statistic, ...]] = ()
    # derived from `finish` and `statistics` when the class is defined
    needs_field: ClassVar[bool]
    windowed: ClassVar[bool]
    finish_inputs: ClassVar[tuple[str, ...]]
    define_inputs: ClassVar[tuple[str, ...]]

    finish: ClassVar[Callable[..., float]]
    define: ClassVar[Callable[..., float]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        where = f"aggregation {cls.__qualname__}"
        if not isinstance(getattr(cls, "name", None), str) or not cls.name.isidentifier():
            raise TypeError(f"{where}: `name` must be an identifier (what a spec's `agg` says)")
        stat_names = [s.name for s in cls.statistics]
        if (
            not all(isinstance(s, Statistic) for s in cls.statistics)
            or len(set(stat_names)) < len(stat_names)
            or set(stat_names) & set(EVENT_INPUTS)
        ):
            raise TypeError(
                f"{where}: `statistics` must be Statistic instances with distinct names, none of "
                f"{', '.join(EVENT_INPUTS)}"
            )
        cls.finish_inputs = _parameters(cls, "finish", (*EVENT_INPUTS, *stat_names))
        cls.define_inputs = _parameters(cls, "define", tuple(DEFINE_INPUTS))
        unread = set(stat_names) - set(cls.finish_inputs)
        if unread:
            raise TypeError(f"{where}: finish does not read the statistics {sorted(unread)}")
        cls.needs_field = bool(cls.statistics) or "value" in cls.finish_inputs
        cls.windowed = bool(cls.statistics) or "count" in cls.finish_inputs


def _parameters(cls: type, method: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    function = cls.__dict__.get(method)
    if not isinstance(function, staticmethod):
        raise TypeError(f"aggregation {cls.__qualname__}: `{method}` must be a @staticmethod")
    names = []
    for p in inspect.signature(function.__func__).parameters.values():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name not in allowed:
            raise TypeError(
                f"aggregation {cls.__qualname__}: {method}({p}): its parameters are named from {', '.join(allowed)}"
            )
        names.append(p.name)
    return tuple(names)


def inline(function: Callable, arguments: dict[str, str], namespace: dict[str, Any]) -> str | None:
    """The source of `function`'s result with its parameters replaced by `arguments` (Python source), or
    None when it is not one `return <expression>` (it must be called). Globals it reads are put into
    `namespace` under names no compiled local uses.

    >>> def half(x):
    ...     return math.floor(x) / 2
    >>> ns = {}
    >>> inline(half, {"x": "run[3]"}, ns), ns["_g_math"] is math
    ('_g_math.floor(run[3]) / 2', True)
    """
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):  # no source (defined in a REPL), or a lambda inside a statement
        return None
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.FunctionDef) else []
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        return None
    expression = body[0].value
    binds = (ast.Lambda, ast.NamedExpr, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    if function.__code__.co_freevars or any(isinstance(node, binds) for node in ast.walk(expression)):
        return None
    renames = dict(arguments)
    for node in ast.walk(expression):
        if isinstance(node, ast.Name) and node.id not in renames:
            if node.id in function.__globals__:
                value = function.__globals__[node.id]
            elif hasattr(builtins, node.id):
                value = getattr(builtins, node.id)
            else:
                return None  # it would fail when called too; calling it says so
            alias = f"_g_{node.id}"
            while namespace.setdefault(alias, value) is not value:
                alias += "_"
            renames[node.id] = alias
    return _replace_names(expression, renames)


def substitute(expression: str, names: dict[str, str]) -> str:
    """A Python expression with names replaced by source.

    >>> substitute("v * v", {"v": "run[2]"})
    'run[2] * run[2]'
    """
    return _replace_names(ast.parse(expression, mode="eval").body, names)


def _replace_names(expression: ast.expr, names: dict[str, str]) -> str:
    class Replace(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            return ast.parse(names[node.id], mode="eval").body if node.id in names else node

    return ast.unparse(Replace().visit(expression))


def _extreme(keys: list, values: list, a: int, b: int, largest: bool) -> list:
    """[max (or min) of the non-None values[a:b], key of the latest cell holding it]; [None, None] if none."""
    window = values[a:b]
    try:
        m = max(window) if largest else min(window)
    except TypeError:  # some cells have no value (None)
        window = [v for v in window if v is not None]
        if not window:
            return [None, None]
        m = max(window) if largest else min(window)
    except ValueError:  # empty
        return [None, None]
    if m is None:
        return [None, None]
    i = b - 1
    while values[i] != m:
        i -= 1
    return [m, keys[i]]
