"""Windowed feature computation and the bridge to Feast."""

import typeguard

# Every Feast import in driftloop goes through this package. Feast decorates its classes with
# typeguard's @typechecked, which re-parses and recompiles a method's whole module once per method:
# 4 of the 6 s `import feast` took here, paid by every worker, Feast writer, CLI command and test
# process. Under `python -O` the decorator is a no-op by design; driftloop's processes get that
# without -O (the Feast objects they build come from a validated spec, not from user calls).
typeguard.typechecked = lambda target=None, **_options: target if target is not None else (lambda f: f)
