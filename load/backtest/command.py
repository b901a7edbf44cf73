"""`driftloop backtest`: pick the source and the registry, run the loop, print the report (see docs/backtest.md)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from driftloop.errors import DriftloopError
from driftloop.spec import load_spec

# What a backtest prints is its report: the decisions it reports, not the log lines of the components making them.
_QUIET = ("driftloop", "mlflow", "alembic", "evidently", "urllib3", "git")


def run_backtest(args: Any) -> int:
    from driftloop.load.backtest import report
    from driftloop.load.backtest.loop import Backtest, Options
    from driftloop.load.backtest.source import generator_source, generator_spec, table_source

    if args.label_delay < 0:
        raise DriftloopError(f"--label-delay {args.label_delay}: an outcome cannot arrive before its event")
    spec, source = _source(args, load_spec, generator_source, generator_spec, table_source)
    options = Options(
        label_delay_events=args.label_delay,
        label_delay_seconds=args.label_delay_seconds,
        retrain_cost=args.retrain_cost or 0.0,
        tick_events=args.tick_events,
        progress=not args.json,
    )
    if args.png:
        _writable(args.png)
    if args.registry:
        # its own model and experiment on a shared server: never the live pipeline's versions or aliases
        suffix = f"-backtest-{uuid.uuid4().hex[:8]}"
        model = spec.model.model_copy(update={"name": spec.model.name + suffix})
        spec = spec.model_copy(update={"name": spec.name + suffix, "model": model})
    with _quiet(args.verbose), _registry(args.registry) as (tracking_uri, key):
        run = Backtest(spec, source, tracking_uri=tracking_uri, key=key, options=options).run()
    summary = report.summarize(run)
    if args.arf:
        from driftloop.load.backtest.arf import arf_standalone

        summary["arf_standalone"] = arf_standalone(spec, source, args.seed)
    seconds = report.timing(run)
    if args.png:
        report.write_png(run, summary, args.png)
    if args.json:
        print(json.dumps(summary), flush=True)
        print(f"driftloop backtest: {json.dumps(seconds)}", file=sys.stderr, flush=True)
    else:
        print(report.render(summary, seconds) + (f"\ntimeline: {args.png}" if args.png else ""), flush=True)
    return 0


def _source(args: Any, load_spec, generator_source, generator_spec, table_source):
    if args.data.startswith("river:"):
        name = args.data.removeprefix("river:")
        spec = load_spec(args.spec) if args.spec else generator_spec(name)
        source = generator_source(
            name, spec, events=args.events, drift_at=args.drift_at, width=args.drift_width, seed=args.seed
        )
        return spec, source
    if not args.spec:
        raise DriftloopError("a table needs its spec: --spec SPEC (see driftloop/specs/ or `driftloop init-spec`)")
    spec = load_spec(args.spec)
    source = table_source(spec, args.data, args.limit)
    if args.drift_points:
        points = _drift_points(args.drift_points, len(source.rows))
        source = type(source)(source.name, source.rows, points)
    return spec, source


def _drift_points(text: str, rows: int) -> list[int]:
    try:
        points = sorted(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise DriftloopError(f"--drift-points {text!r}: give event indices, e.g. 1000,25000") from None
    outside = [p for p in points if not 0 <= p < rows]
    if outside:
        raise DriftloopError(f"--drift-points {outside[0]} is outside the table's {rows} rows")
    return points


def _writable(path: str) -> None:
    parent = Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise DriftloopError(f"--png {path}: cannot write into {parent}")


@contextmanager
def _registry(uri: str | None):
    """(tracking URI, signing key): a throwaway SQLite registry and key, or the given server with a fresh key."""
    from driftloop.signing import create_key, load_key

    with tempfile.TemporaryDirectory(prefix="driftloop-backtest-") as directory:
        create_key(Path(directory) / "signing.key")
        key = load_key(Path(directory) / "signing.key")
        yield (uri or _sqlite_registry(Path(directory))), key


def _sqlite_registry(directory: Path) -> str:
    """A new SQLite registry in `directory`. Creating MLflow's schema takes ~10 s of migrations, so an empty
    one is kept in the temp directory per MLflow version and copied."""
    import mlflow
    from mlflow import MlflowClient

    database = directory / "mlflow.db"
    uri = f"sqlite:///{database}"
    template = Path(tempfile.gettempdir()) / f"driftloop-backtest-empty-mlflow-{mlflow.__version__}.db"
    if template.is_file():
        shutil.copyfile(template, database)
        return uri
    MlflowClient(uri).search_experiments(max_results=1)  # creates the schema
    aside = template.with_name(f".{template.name}.{os.getpid()}")
    shutil.copyfile(database, aside)
    os.replace(aside, template)  # whole or not at all, for backtests starting together
    return uri


@contextmanager
def _quiet(verbose: bool):
    if verbose:
        yield
        return
    saved = {name: logging.getLogger(name).level for name in _QUIET}
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow's and Evidently's advice to their own users
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
