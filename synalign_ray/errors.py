"""User-facing errors: each names the problem in one line so the CLI can print it and exit non-zero.

Raise these for bad input or configuration; anything else reaching the CLI is a bug and keeps its traceback.
"""


class SynAlignError(Exception):
    """Base class for errors caused by the user's input, config or environment."""


class ConfigError(SynAlignError):
    """A configuration value is unknown, missing or out of range."""


class InputError(SynAlignError):
    """Input data is missing, unreadable, empty or of the wrong shape or type."""


class StorageError(SynAlignError):
    """The output or input location cannot be reached or written."""


class ModelError(SynAlignError):
    """A model cannot be found or loaded."""
