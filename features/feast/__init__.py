"""The bridge to Feast: objects derived from the spec, the online/offline writer, point-in-time history,
and a batched SQLite online store."""

from typing import Any

import prometheus_client  # noqa: F401 (its metric values stay in-process: decided at its import, before Feast's)
import typeguard


def _no_typecheck(target: Any = None, **_options: Any) -> Any:
    return target if target is not None else (lambda f: f)


# Every Feast import in driftloop goes through this package. Feast decorates its classes with typeguard's
# @typechecked, which re-parses and recompiles a method's whole module once per method: most of what
# `import feast` costs every worker, writer and CLI process (docs/decisions.md). Under `python -O` the
# decorator is a no-op by design; this gives driftloop's processes that without -O (the Feast objects they
# build come from a validated spec, not from user calls).
typeguard.typechecked = _no_typecheck
