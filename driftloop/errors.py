"""The one error type the CLI turns into a single line and a non-zero exit."""


class DriftloopError(Exception):
    """A problem the user can fix (bad setting, bad spec, port taken, ...); its message is the whole story."""
