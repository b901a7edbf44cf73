"""The one error type the CLI turns into a single line and a non-zero exit."""


class DriftloopError(Exception):
    """A problem the user can fix (bad setting, bad spec, port taken, ...); its message is the whole story of what
    is wrong, and `fix` (when known) says what to do: the CLI prints it after the message."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.fix = fix
