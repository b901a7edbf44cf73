"""A helper process started with `spawn`, answering over a pipe.

`spawn`, not `fork`: a fork would copy the locks of librdkafka's threads, held or not. The child is a
daemon (it dies with its parent) and receives its end of the pipe as its last argument.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from driftloop.errors import DriftloopError


def start_child(
    target: Callable[..., None], args: tuple[Any, ...], name: str, *, duplex: bool = True
) -> tuple[BaseProcess, Connection]:
    """The started child and the parent's end of the pipe (read-only unless `duplex`)."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=duplex)
    child = context.Process(target=target, args=(*args, child_end), name=name, daemon=True)
    child.start()
    child_end.close()  # so the parent sees EOF when the child dies
    return child, parent_end


def receive(
    connection: Connection,
    child: BaseProcess,
    what: str,
    timeout: float | None = None,
    error: type[DriftloopError] = DriftloopError,
) -> Any:
    """The child's next answer; `error` when it exits first or, with `timeout`, does not answer in time."""
    if timeout is not None and not connection.poll(timeout):
        raise error(f"{what} did not answer within {timeout:g}s")
    try:
        return connection.recv()
    except EOFError:
        raise error(f"{what} exited (code {child.exitcode})") from None
