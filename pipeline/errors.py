"""Errors a user can fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or a refused operation, explained in one line."""


class ArgumentError(UserError):
    """A UserError about one argument, named by ``arg`` (a config field or parameter), so a
    command-line front end can say which of its flags it concerns."""

    def __init__(self, arg: str, message: str):
        super().__init__(message)
        self.arg = arg
