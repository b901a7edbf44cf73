"""The `driftloop` command."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from driftloop import __version__
from driftloop import settings as settings_module
from driftloop.errors import DriftloopError


def _say(line: str) -> None:
    print(f"driftloop: {line}", flush=True)


def cmd_up(config: settings_module.Settings, _args: argparse.Namespace) -> int:
    from driftloop.stack import run_stack

    run_stack(config, _say)
    return 0


def cmd_broker(config: settings_module.Settings, _args: argparse.Namespace) -> int:
    """Only the embedded broker, for people who bring their own workers."""
    import signal

    from driftloop.broker import EmbeddedBroker
    from driftloop.stack import Stopped, _raise_stopped

    config.data_dir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(config.broker_port, config.data_dir / "logs")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stopped)
    try:
        broker.start()
        _say(f"embedded broker ready; bootstrap address: {broker.bootstrap}")
        print(broker.bootstrap, flush=True)
        broker.wait_ready(lambda: False, timeout=float("inf"), what="being stopped")
    except Stopped:
        _say("broker stopped")
    finally:
        broker.stop()
    return 0


def cmd_mlflow(config: settings_module.Settings, _args: argparse.Namespace) -> int:
    """Only the MLflow server + UI over the configured (or local SQLite) backend."""
    import signal

    from driftloop.mlflow_server import MlflowServer, backend_store_uri
    from driftloop.stack import Stopped, _raise_stopped

    config.data_dir.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(backend_store_uri(config.mlflow_tracking_uri, config.data_dir), config.data_dir,
                          config.mlflow_port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stopped)
    try:
        server.start()
        _say(f"MLflow UI at {server.url}")
        server.wait_ready(lambda: False, timeout=float("inf"), what="being stopped")
    except Stopped:
        _say("MLflow server stopped")
    finally:
        server.stop()
    return 0


def cmd_check_spec(config: settings_module.Settings, args: argparse.Namespace) -> int:
    from driftloop.spec import load_spec

    path = args.spec or config.spec
    spec = load_spec(path)
    _say(f"{path}: spec {spec.name!r} is valid: {len(spec.events.fields)} event fields, "
         f"{len(spec.features)} windowed features, model {spec.model.flavor}/{spec.model.estimator} "
         f"on {len(spec.model_inputs)} inputs")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftloop", description=__doc__)
    parser.add_argument("--version", action="version", version=f"driftloop {__version__}")
    parser.add_argument("--config", help="YAML settings file (default: $DRIFTLOOP_CONFIG); environment wins over it")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("up", help="start the stack: embedded broker, MLflow, Feast, topics, workers").set_defaults(
        run=cmd_up)
    commands.add_parser("broker", help="run only the embedded broker and print its bootstrap address").set_defaults(
        run=cmd_broker)
    commands.add_parser("mlflow", help="run only the MLflow tracking server and UI").set_defaults(run=cmd_mlflow)
    check = commands.add_parser("check-spec", help="validate a pipeline spec")
    check.add_argument("spec", nargs="?", help="spec file (default: $DRIFTLOOP_SPEC)")
    check.set_defaults(run=cmd_check_spec)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = settings_module.load(args.config)
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.run(config, args)
    except DriftloopError as exc:
        print(f"driftloop: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
