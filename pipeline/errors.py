"""Errors a user can fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or a refused operation, explained in one line.

    ``param``: the argument the message is about (a config field such as ``overwrite`` or
    ``resolution``), so that the CLI can name its own flag for it; the library's message
    speaks of values, never of flags.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def at_least(obj: object, **minimums: float) -> None:
    """Refuse the first field of ``obj`` below its minimum (``resolution=8``); a field that
    is None (unset) passes."""
    for name, low in minimums.items():
        value = getattr(obj, name)
        if value is not None and value < low:
            raise UserError(f"{name} must be at least {low} (got {value})", param=name)
