"""The live view of a running stack: what `driftloop up` shows once the stack is up, and `driftloop status --watch`.

Every `pulse_every` seconds it looks at the workers' /metrics (events/s, lag, p99 and who serves which share,
over the interval since the last look: driftloop/pulse.py), the registry's aliases and, under `driftloop up`,
its children. Between looks it follows the `audit` topic (every decision, one line each, as it lands), the
`drift` topic (the last evaluation) and, with the demo, the demo's own story lines from its log.

Two displays: in a terminal, a panel that redraws in place (rich) with the decisions and story lines printed
above it; anywhere else (a pipe, a file, a test), plain lines through `say`: the story and decision lines as
they come, and one `pulse:` line per look (with a `drift:` line when a new evaluation came in between).
Nothing here may stop the stack: a look that fails is shown as what failed.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.follow import LogFollower, TopicFollower
from driftloop.load.run_records import json_object
from driftloop.load.timeline import epoch
from driftloop.loop_status import decision_line, drift_line, drift_summary
from driftloop.models.registry import aliases
from driftloop.pulse import Pulse, Snapshot
from driftloop.status import scrape

TERMINAL_PULSE_SECONDS = 2.0
PLAIN_PULSE_SECONDS = 15.0
QUIET_ACTIONS = frozenset({"canary_waiting"})  # a trial's progress every few seconds: the panel shows the shares
DEMO_PREFIX = "driftloop: demo: "
DEMO_DECISION = "driftloop: demo: decision: "  # the demo repeats audit records: shown from the topic instead


@dataclass
class Look:
    """What the last look found; the panel and the `pulse:` line are drawn from it."""

    started: float  # time.time() the view opened
    pulse: Pulse | None = None
    workers: tuple[int, int] = (0, 0)  # answered, asked
    worker_problem: str | None = None
    aliases: dict[str, int] = field(default_factory=dict)
    registry_problem: str | None = None
    drift: dict[str, Any] | None = None  # loop_status.drift_summary of the newest report
    children: dict[str, dict[str, Any]] | None = None  # collect_children()["children"], under `driftloop up`


class Display(Protocol):
    pulse_every: float  # seconds between looks, unless the caller says otherwise

    def open(self) -> None: ...
    def story(self, line: str) -> None: ...
    def decision(self, record: dict[str, Any]) -> None: ...
    def show(self, look: Look, new_drift: bool) -> None: ...
    def close(self) -> None: ...


class LiveView:
    """Call `tick()` often (it is cheap between looks); `close()` shows what is left and restores the terminal."""

    def __init__(
        self,
        display: Display,
        *,
        bootstrap: str,
        tracking_uri: str,
        model_name: str,
        audit_topic: str,
        drift_topic: str,
        partitions: int,
        metrics_urls: Callable[[], list[str]],
        children: Callable[[], dict[str, Any] | None] = lambda: None,
        pulse_every: float | None = None,
        decisions_since: float | None = None,
        backlog: int = 0,
        story: LogFollower | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """Shows the decisions made from `decisions_since` (epoch seconds; default: from now on), after the last
        `backlog` made before it."""
        self.display, self.model_name, self.tracking_uri = display, model_name, tracking_uri
        self.metrics_urls, self.children, self.clock = metrics_urls, children, clock
        self.pulse_every = pulse_every or display.pulse_every
        self.bootstrap, self.audit_topic, self.drift_topic, self.partitions = (
            bootstrap,
            audit_topic,
            drift_topic,
            partitions,
        )
        self._followers: tuple[TopicFollower, TopicFollower] | None = None  # audit, drift; once the broker answers
        self._topic_problem: str | None = None
        self.story = story
        self.look = Look(time.time())
        self._since = self.look.started if decisions_since is None else decisions_since
        self._backlog = backlog
        self._reports = 0
        self._new_drift = False
        self._snapshot: Snapshot | None = None
        self._next_look = clock()

    def open(self) -> None:
        self.display.open()
        if self._backlog:  # read to the topic's end now: the follower cannot tell history from news by itself
            history = [
                r
                for r in kafka.read_topic(self.bootstrap, self.audit_topic, decode=json_object)
                if _shown(r) and _at(r) < self._since
            ]
            for record in history[-self._backlog :]:
                self.display.decision(record)

    def tick(self) -> None:
        self._follow()
        if self.clock() >= self._next_look:
            first = self._snapshot is None
            self._take_look()
            self._connect()
            # a first look has no interval to measure: the next comes soon, and shows what moved between them
            self._next_look = self.clock() + (
                min(self.pulse_every, TERMINAL_PULSE_SECONDS) if first else self.pulse_every
            )
            if not first or self._snapshot is None:
                self.display.show(self.look, self._new_drift)
                self._new_drift = False

    def close(self) -> None:
        """The last lines (a demo's PNG path and links come as it ends), then the display closes."""
        try:
            self._follow()
        finally:
            self.display.close()
            for follower in self._followers or ():
                follower.close()

    def _connect(self) -> None:
        """Follow the topics once the broker answers; tried at every look, shortly, so the stack's own checks
        never wait long behind the view."""
        if self._followers is not None:
            return
        followers: list[TopicFollower] = []
        try:
            for topic in (self.audit_topic, self.drift_topic):
                followers.append(TopicFollower(self.bootstrap, topic, self.partitions, timeout=2.0))
        except DriftloopError as exc:
            for follower in followers:
                follower.close()
            if str(exc) != self._topic_problem:  # said once, not at every look
                self._topic_problem = str(exc)
                self.display.story(f"live view: {exc}; trying again")
            return
        self._followers = (followers[0], followers[1])

    def _follow(self) -> None:
        for line in self.story.poll() if self.story is not None else ():
            if line.startswith(DEMO_PREFIX) and not line.startswith(DEMO_DECISION):
                self.display.story(line.removeprefix("driftloop: "))
        if self._followers is None:
            return
        audit, drift = self._followers
        try:
            decisions = [r for r in audit.poll() if _shown(r) and _at(r) >= self._since]
            reports = drift.poll()
        except DriftloopError as exc:
            self.display.story(f"live view: {exc}")
            return
        for record in decisions:
            self.display.decision(record)
        if reports:
            self._reports += len(reports)
            self.look.drift = drift_summary(reports[-1], self._reports)
            self._new_drift = True

    def _take_look(self) -> None:
        urls = self.metrics_urls()
        scrapes, problems = [], []
        for url in urls:
            try:
                scrapes.append(scrape(url))
            except (OSError, ValueError) as exc:
                problems.append(f"{url}: {_reason(exc)}")
        self.look.workers = (len(scrapes), len(urls))
        self.look.worker_problem = "; ".join(problems) or (None if urls else "no worker metrics URL known")
        if scrapes:
            snapshot = Snapshot.of(scrapes, self.clock())
            if self._snapshot is not None:
                self.look.pulse = Pulse.between(self._snapshot, snapshot)
            self._snapshot = snapshot
        try:
            self.look.aliases = aliases(self.model_name, tracking_uri=self.tracking_uri)
            self.look.registry_problem = None
        except Exception as exc:  # MLflow restarting: the rest of the look is still worth showing
            self.look.registry_problem = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        children = self.children()
        self.look.children = None if children is None else children.get("children")


def _shown(record: dict[str, Any]) -> bool:
    return record.get("action") not in QUIET_ACTIONS


def _at(record: dict[str, Any]) -> float:
    try:
        return epoch(record["at"])
    except (KeyError, TypeError, ValueError):
        return 0.0


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc)


# --- what a look says ---------------------------------------------------------------------------------------


def events_text(look: Look) -> str:
    pulse = look.pulse
    if pulse is None:
        return look.worker_problem or "measuring (two looks at the workers' metrics are needed)"
    p99 = "-" if pulse.p99_seconds is None else f"{pulse.p99_seconds * 1000:.3g} ms"
    return f"{pulse.events_per_second:,.0f} events/s, lag {pulse.lag:,}, p99 {p99}"


def serving_text(look: Look) -> str:
    pulse = look.pulse
    shares = (
        []
        if pulse is None
        else [
            f"{variant} v{'/v'.join(map(str, serving.versions))} {serving.share:.0%}"
            for variant, serving in pulse.serving.items()
        ]
    )
    return ", ".join(shares) or "no predictions in the last interval"


def registry_text(look: Look) -> str:
    if look.registry_problem:
        return f"unreachable: {look.registry_problem}"
    return ", ".join(f"{alias} v{version}" for alias, version in sorted(look.aliases.items())) or "no aliases"


def children_text(look: Look) -> str | None:
    if look.children is None:
        return None

    def one(child: str, state: dict[str, Any]) -> str:
        restarts = state["restarts"]
        return f"{child} {'up' if state['up'] else 'DOWN'}" + (f" ({restarts} restarts)" if restarts else "")

    return ", ".join(one(child, state) for child, state in look.children.items())


def pulse_line(look: Look) -> str:
    return f"pulse: {events_text(look)}; serving {serving_text(look)}; registry {registry_text(look)}" + (
        f"; workers {look.workers[0]}/{look.workers[1]} answered" if look.workers[0] < look.workers[1] else ""
    )


# --- the two displays ---------------------------------------------------------------------------------------


class PlainDisplay:
    """One line per story line, decision and look, through `say` (which prefixes "driftloop: ")."""

    pulse_every = PLAIN_PULSE_SECONDS

    def __init__(self, say: Callable[[str], None]):
        self.say = say

    def open(self) -> None:
        pass

    def story(self, line: str) -> None:
        self.say(line)

    def decision(self, record: dict[str, Any]) -> None:
        self.say(f"decision: {decision_line(record)}")

    def show(self, look: Look, new_drift: bool) -> None:
        self.say(pulse_line(look))
        if new_drift:
            self.say(f"drift: {drift_line(look.drift)}")

    def close(self) -> None:
        pass


class TerminalDisplay:
    """A panel redrawn in place; decisions and story lines scroll above it."""

    pulse_every = TERMINAL_PULSE_SECONDS

    def __init__(self, title: str, console: Any = None):
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.console = console or Console()
        self._live = Live(self._panel(None), console=self.console, refresh_per_second=4, transient=False)

    def open(self) -> None:
        self._live.start()

    def story(self, line: str) -> None:
        self.console.print(f"[bold cyan]{_clock()}[/] {_escape(line)}", highlight=False)

    def decision(self, record: dict[str, Any]) -> None:
        colour = {
            "promoted": "green",
            "rolled_back": "red",
            "model_refused": "red",
            "retrain_triggered": "yellow",
            "alias_moved": "magenta",
            "child_restarted": "red",
        }.get(str(record.get("action")), "white")
        self.console.print(f"[bold cyan]{_clock()}[/] [{colour}]{_escape(decision_line(record))}[/]", highlight=False)

    def show(self, look: Look, new_drift: bool) -> None:
        self._live.update(self._panel(look))

    def close(self) -> None:
        self._live.stop()

    def _panel(self, look: Look | None) -> Any:
        from rich.panel import Panel
        from rich.table import Table

        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        if look is None:
            grid.add_row("", "looking at the workers, the registry and the topics ...")
        else:
            grid.add_row("events", events_text(look))
            grid.add_row("serving", serving_text(look))
            grid.add_row("registry", registry_text(look))
            grid.add_row("drift", drift_line(look.drift))
            children = children_text(look)
            if children is not None:
                grid.add_row("children", children)
            if look.worker_problem:
                grid.add_row("workers", f"{look.workers[0]}/{look.workers[1]} answered: {look.worker_problem}")
        up = "" if look is None else f" · watching for {_duration(time.time() - look.started)}"
        return Panel(
            grid,
            title=f"[bold]{_escape(self.title)}[/]{up}",
            title_align="left",
            subtitle="Ctrl-C stops",
            subtitle_align="right",
        )


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def display_for(stream: Any, say: Callable[[str], None], title: str) -> Display:
    """The panel on a terminal, plain lines anywhere else."""
    return TerminalDisplay(title) if stream.isatty() else PlainDisplay(say)
