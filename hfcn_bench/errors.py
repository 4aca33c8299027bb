"""Errors the command line turns into one clear line (with an optional hint)."""


class HfcnError(Exception):
    """A known, user-facing failure. ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint
