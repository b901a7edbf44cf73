"""Shared test helpers: stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time

README_EVENT = (
    b'{"event_id":"e-1","user_id":"u-42","event_time":"2026-11-23T12:00:00Z","amount":31.5,'
    b'"merchant_category":"grocery","country":"NL","channel":"pos","card_present":true,'
    b'"account_age_days":400}'
)


def stack_env(tmp_path, **extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DRIFTLOOP_") and k != "KAFKA_BOOTSTRAP_SERVERS" and k != "MLFLOW_TRACKING_URI"
    }
    env.update(
        DRIFTLOOP_DATA_DIR=str(tmp_path / "data"),
        DRIFTLOOP_FEAST_REPO=str(tmp_path / "repo"),
        DRIFTLOOP_BROKER_PORT="0",
        DRIFTLOOP_MLFLOW_PORT="0",
        DRIFTLOOP_PARTITIONS="2",
        DRIFTLOOP_METRICS_PORT="0",
        DRIFTLOOP_SUPERVISOR_PORT="0",
        DRIFTLOOP_CONTROL_METRICS_PORT="0",
    )
    env.update(extra)
    return env


def driftloop_command(*args):
    return [sys.executable, "-m", "driftloop.cli", *args]


def start_driftloop(*args, env):
    """A driftloop command in a child process, its stdout and stderr piped as text (for wait_for_line)."""
    return subprocess.Popen(
        driftloop_command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_line(process, text, timeout):
    deadline = time.monotonic() + timeout
    lines = []
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        if line:
            lines.append(line)
            if text in line:
                return lines
        else:
            time.sleep(0.1)
    raise AssertionError(f"no {text!r} within {timeout}s; output: {''.join(lines)}{process.stderr.read()}")
