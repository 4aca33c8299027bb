"""The project's error and warning types, in one place. The command line turns an
:class:`HfcnError` (and an ``OSError``, which names its file) into one clear line with an
optional hint; any other exception is a bug and shows its traceback."""

__all__ = ["HfcnError", "ModelConfigError", "UndefinedMetricError", "DataWarning", "GridWarning"]


class HfcnError(Exception):
    """A known, user-facing failure. ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class ModelConfigError(HfcnError, ValueError):
    """A bad model argument: an :class:`HfcnError` (one clear line in the CLI) that is also a
    ``ValueError`` for library callers."""


class UndefinedMetricError(ValueError):
    """The metric has no value on this data (e.g. ROC AUC when only one class is present)."""


class DataWarning(UserWarning):
    """Emitted once per load when the data had warts (details are in the report)."""


class GridWarning(UserWarning):
    """Something in a grid folder is wrong but the run goes on: a damaged cell (named with its
    file), a stale lock taken over."""
